"""What the local single-node cluster is made of, as pure functions: the components' config
files, command lines and the CoreDNS manifests (tools/cluster/README.md). cluster.py writes and
starts them; tests/cluster checks them without a node. Standard library only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_NAME = "jiomosa-node"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE = "jiomosa0"
API_PORT = 6443
ETCD_PORTS = (12379, 12380)  # off etcd's defaults: a developer's own etcd keeps them
REGISTRY = "jiomosa.local"
COREDNS_IMAGE = f"{REGISTRY}/coredns"

# Identities of the components: static tokens (--token-auth-file). A local test cluster needs
# no certificate rotation; the names and groups are the ones RBAC's bootstrap roles bind.
IDENTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("jiomosa-admin", ("system:masters",)),
    "kubelet": (f"system:node:{NODE_NAME}", ("system:nodes",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    "proxy": ("system:kube-proxy", ()),
}


@dataclass(frozen=True)
class Layout:
    """Where a cluster's files live: ``state`` is wiped by ``down``; ``bin`` holds the built
    binaries (control plane and node)."""

    state: Path
    controlplane_bin: Path
    node_bin: Path
    node_ip: str
    front_listen: str = "127.0.0.1:8480"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.state / "cni"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    def kubeconfig_of(self, who: str) -> Path:
        return self.kubeconfig if who == "admin" else self.state / f"{who}.kubeconfig"


def containerd_config(lay: Layout, sandbox_image: str) -> str:
    """containerd 1.6's config (version 2): its own root, state and socket, so a containerd
    already on the machine is left alone."""
    return f"""version = 2
root = "{lay.state}/containerd"
state = "{lay.run}/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{lay.containerd_socket}"

[plugins."io.containerd.grpc.v1.cri"]
  # Imported locally (no registry); kubelet's image GC is off, so it stays.
  sandbox_image = "{sandbox_image}"
  # The VM withholds CAP_SYS_RESOURCE: runc may not lower oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{lay.cni_conf_dir}"
"""


def cni_config(lay: Layout) -> dict[str, Any]:
    """A bridge with host-local IPAM: every pod on ``BRIDGE``, the host its gateway (so the
    host reaches pod IPs directly: the front proxies to them), masqueraded out."""
    return {
        "cniVersion": "1.0.0",
        "name": "jiomosa",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
             # A pod reaching its own Service IP comes back through the bridge.
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(lay.state / "cni-ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(lay: Layout) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{lay.containerd_socket}",
        "cgroupDriver": "cgroupfs",  # no systemd here
        "failSwapOn": False,
        "address": lay.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(lay.pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        # Images come from `ctr import`, never a registry: garbage-collecting one loses it.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # The VM reports no filesystem stats: only memory may evict.
        "evictionHard": {"memory.available": "300Mi"},
        "evictionPressureTransitionPeriod": "30s",
        "maxPods": 60,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
        "logging": {"verbosity": 1},
    }


def kube_proxy_config(lay: Layout) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": "0.0.0.0",
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clientConnection": {"kubeconfig": str(lay.kubeconfig_of("proxy"))},
        # The VM's conntrack table size is not ours to change.
        "conntrack": {"maxPerCore": 0, "min": 0},
    }


def commands(lay: Layout) -> dict[str, list[str]]:
    """Each component's command line, in start order."""
    cp, nb, pki = lay.controlplane_bin, lay.node_bin, lay.pki
    etcd_client, etcd_peer = ETCD_PORTS
    return {
        "containerd": ["containerd", "--config", str(lay.state / "containerd.toml")],
        "etcd": [str(cp / "etcd"), "--name", NODE_NAME, "--data-dir", str(lay.state / "etcd"),
                 "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                 "--initial-cluster", f"{NODE_NAME}=http://127.0.0.1:{etcd_peer}",
                 "--listen-metrics-urls", "http://127.0.0.1:0", "--log-level", "warn",
                 "--quota-backend-bytes", str(2 << 30)],
        "kube-apiserver": [
            str(cp / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            f"--advertise-address={lay.node_ip}", "--bind-address=0.0.0.0",
            f"--secure-port={API_PORT}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--token-auth-file={pki / 'tokens.csv'}", f"--client-ca-file={pki / 'ca.crt'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--profiling=false", "--v=1"],
        "kube-controller-manager": [
            str(nb / "kube-controller-manager"),
            f"--kubeconfig={lay.kubeconfig_of('controller-manager')}",
            f"--authentication-kubeconfig={lay.kubeconfig_of('controller-manager')}",
            f"--authorization-kubeconfig={lay.kubeconfig_of('controller-manager')}",
            "--bind-address=127.0.0.1", "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            # A new quota (and a CRD's count in it) is counted at the next full sync: 5 min
            # by default, during which the API server refuses what the quota covers.
            "--resource-quota-sync-period=10s",
            "--profiling=false", "--v=1"],
        "kube-scheduler": [
            str(nb / "kube-scheduler"), f"--kubeconfig={lay.kubeconfig_of('scheduler')}",
            f"--authentication-kubeconfig={lay.kubeconfig_of('scheduler')}",
            f"--authorization-kubeconfig={lay.kubeconfig_of('scheduler')}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false",
            "--v=1"],
        "kubelet": [
            str(nb / "kubelet"), f"--config={lay.state / 'kubelet.json'}",
            f"--kubeconfig={lay.kubeconfig_of('kubelet')}",
            f"--root-dir={lay.state / 'kubelet'}", f"--hostname-override={NODE_NAME}",
            f"--node-ip={lay.node_ip}", "--v=1"],
        "kube-proxy": [str(nb / "kube-proxy"), f"--config={lay.state / 'kube-proxy.json'}",
                       "--v=1"],
    }


def coredns_manifests(image: str) -> list[dict[str, Any]]:
    """The cluster DNS (as kubeadm installs it): CoreDNS behind the ``kube-dns`` Service at
    ``DNS_SERVICE_IP``; names outside the cluster go to the node's resolvers."""
    labels = {"k8s-app": "kube-dns"}
    ns = "kube-system"
    corefile = f""".:53 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    forward . /etc/resolv.conf
    cache 30
    loop
    loadbalance
}}
"""
    rules = [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["list", "watch"]},
    ]
    container = {
        "name": "coredns", "image": image, "imagePullPolicy": "Never",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                          "initialDelaySeconds": 10, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "50m", "memory": "48Mi"},
                      "limits": {"memory": "170Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "coredns", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "coredns", "namespace": ns}, "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "coredns", "namespace": ns, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": "coredns", "dnsPolicy": "Default",
                      "priorityClassName": "system-cluster-critical",
                      "containers": [container],
                      "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels},
         "spec": {"selector": labels, "clusterIP": DNS_SERVICE_IP,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}},
    ]


def kubeconfig(server: str, ca_pem_b64: str, user: str, token: str) -> str:
    """A kubeconfig with a bearer token (JSON, which is YAML)."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "jiomosa", "cluster": {"server": server,
                                                     "certificate-authority-data": ca_pem_b64}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "jiomosa", "context": {"cluster": "jiomosa", "user": user}}],
        "current-context": "jiomosa", "preferences": {},
    }, indent=2) + "\n"
