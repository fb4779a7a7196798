"""The local node's configuration (tools/cluster/node_config.py), checked without a node: the
settings each hard-won fact of this machine kind needs are there, and the pieces agree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "cluster"))

import node_config as nc  # noqa: E402


@pytest.fixture
def lay(tmp_path: Path) -> nc.Layout:
    return nc.Layout(state=tmp_path / "state", controlplane_bin=tmp_path / "cp",
                     node_bin=tmp_path / "node", node_ip="192.0.2.2")


def test_containerd_runs_pods_where_the_vm_allows(lay: nc.Layout) -> None:
    text = nc.containerd_config(lay, "jiomosa.local/pause:1")
    # CAP_SYS_RESOURCE is withheld: without this every sandbox fails to start.
    assert "restrict_oom_score_adj = true" in text
    assert 'sandbox_image = "jiomosa.local/pause:1"' in text
    assert "SystemdCgroup = false" in text
    assert 'bin_dir = "/usr/lib/cni"' in text  # Debian's plugins
    # Its own socket, root and state: a containerd already on the machine is left alone.
    assert f'address = "{lay.containerd_socket}"' in text
    assert f'root = "{lay.state}/containerd"' in text


def test_kubelet_settings(lay: nc.Layout) -> None:
    config = nc.kubelet_config(lay)
    assert config["cgroupDriver"] == "cgroupfs" and config["failSwapOn"] is False
    assert config["containerRuntimeEndpoint"] == f"unix://{lay.containerd_socket}"
    assert config["clusterDNS"] == [nc.DNS_SERVICE_IP]
    # Imported images cannot be pulled again: image GC never runs.
    assert config["imageGCHighThresholdPercent"] == 100
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["readOnlyPort"] == 0


def test_cni_bridge_and_proxy_agree(lay: nc.Layout) -> None:
    cni = nc.cni_config(lay)
    bridge = cni["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["bridge"] == nc.BRIDGE
    assert bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": nc.POD_CIDR}]]
    proxy = nc.kube_proxy_config(lay)
    assert proxy["mode"] == "iptables" and proxy["clusterCIDR"] == nc.POD_CIDR
    assert proxy["hostnameOverride"] == nc.NODE_NAME


def test_commands_wire_the_components_together(lay: nc.Layout) -> None:
    commands = nc.commands(lay)
    assert list(commands) == ["containerd", "etcd", "kube-apiserver",
                              "kube-controller-manager", "kube-scheduler", "kubelet",
                              "kube-proxy"]
    api = commands["kube-apiserver"]
    etcd_client = nc.ETCD_PORTS[0]
    assert f"--etcd-servers=http://127.0.0.1:{etcd_client}" in api
    assert f"--service-cluster-ip-range={nc.SERVICE_CIDR}" in api
    assert "--authorization-mode=Node,RBAC" in api
    assert f"--advertise-address={lay.node_ip}" in api
    kcm = commands["kube-controller-manager"]
    assert f"--service-cluster-ip-range={nc.SERVICE_CIDR}" in kcm
    assert any(a.startswith("--controllers=") and "-nodeipam" in a for a in kcm)
    kubelet = commands["kubelet"]
    assert f"--hostname-override={nc.NODE_NAME}" in kubelet
    assert f"--node-ip={lay.node_ip}" in kubelet
    # The component identities match the Node authorizer's expectations.
    user, groups = nc.IDENTITIES["kubelet"]
    assert user == f"system:node:{nc.NODE_NAME}" and groups == ("system:nodes",)


def test_coredns_serves_the_cluster_dns_address() -> None:
    manifests = {(m["kind"], m["metadata"]["name"]): m
                 for m in nc.coredns_manifests("jiomosa.local/coredns:v1")}
    service = manifests[("Service", "kube-dns")]
    assert service["spec"]["clusterIP"] == nc.DNS_SERVICE_IP
    # The chart's DNS NetworkPolicy peer selects k8s-app=kube-dns.
    assert service["spec"]["selector"] == {"k8s-app": "kube-dns"}
    pod = manifests[("Deployment", "coredns")]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "jiomosa.local/coredns:v1"
    assert pod["containers"][0]["imagePullPolicy"] == "Never"
    assert pod["dnsPolicy"] == "Default"  # upstream: the node's resolvers
    corefile = manifests[("ConfigMap", "coredns")]["data"]["Corefile"]
    assert f"kubernetes {nc.CLUSTER_DOMAIN}" in corefile


def test_kubeconfig_is_json_with_a_token() -> None:
    config = json.loads(nc.kubeconfig("https://127.0.0.1:6443", "Q0E=", "me", "t0k"))
    assert config["users"] == [{"name": "me", "user": {"token": "t0k"}}]
    assert config["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:6443",
                                                "certificate-authority-data": "Q0E="}
