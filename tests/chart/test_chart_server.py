"""The rendered chart against a real kube-apiserver: every object of the defaults and of every
ci/*-values.yaml variant validated by the server (`kubectl apply --dry-run=server`), in a
namespace that enforces the `restricted` Pod Security level; the CRDs come from the chart's
crds/ folder, the Gateway API CRDs (for the HTTPRoute) from the Go module
sigs.k8s.io/gateway-api."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from chart_support import CHART, CI_VALUES, RELEASE, ChartCluster, docs, dump, helm_bin, render
from op_harness import eventually

VARIANTS = [None, *CI_VALUES]
VARIANT_IDS = ["defaults", *[p.name.removesuffix("-values.yaml") for p in CI_VALUES]]


def sessions_namespaces(manifests: list[dict[str, object]], release_ns: str) -> set[str]:
    out = set()
    for d in manifests:
        ns = d["metadata"].get("namespace")  # type: ignore[union-attr]
        if ns and ns != release_ns:
            out.add(str(ns))
    return out


@pytest.mark.parametrize("values", VARIANTS, ids=VARIANT_IDS)
def test_server_accepts_every_object(chart_cluster: ChartCluster, values: Path | None) -> None:
    ns = chart_cluster.namespace("chart-dry")
    text = render(ns, [values] if values else [])
    manifests = docs(text)
    for other in sessions_namespaces(manifests, ns):
        chart_cluster.cp.ensure_namespace(other)
    result = chart_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text,
                                   check=False)
    assert result.returncode == 0, result.stderr
    # No warning either: no deprecated API, no Pod Security violation (Deployments and
    # StatefulSets only warn; the helm test Pod would be refused).
    assert "Warning" not in result.stderr, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(manifests), result.stdout
    assert all(line.endswith("(server dry run)") for line in lines), result.stdout


def test_restricted_pod_security_is_enforced(chart_cluster: ChartCluster) -> None:
    """The namespaces above really enforce `restricted`: a pod without a hardened security
    context is refused, so the helm test Pod passing means something."""
    ns = chart_cluster.namespace("chart-psa")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lax", "namespace": ns},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    result = chart_cluster.kubectl("apply", "--dry-run=server", "-f", "-",
                                   input=json.dumps(pod), check=False)
    assert result.returncode != 0 and "violates PodSecurity" in result.stderr, result.stderr


def test_server_rejects_what_the_schema_cannot_see(chart_cluster: ChartCluster) -> None:
    """The server validates the rendered objects beyond the values schema (here: an egress
    exception outside its CIDR, which the schema's CIDR pattern accepts)."""
    ns = chart_cluster.namespace("chart-bad")
    text = render(ns, sets=["networkPolicy.browser.blockedIPv6[0]=::ffff:0:0/96"])
    result = chart_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text,
                                   check=False)
    assert result.returncode != 0
    assert "must be a strict subset of `cidr`" in result.stderr, result.stderr


def test_crds_installed_from_the_chart(chart_cluster: ChartCluster) -> None:
    out = chart_cluster.kubectl("get", "crd", "browsersessions.jiomosa.io", "httproutes."
                                "gateway.networking.k8s.io", "-o", "name").stdout.split()
    assert out == ["customresourcedefinition.apiextensions.k8s.io/browsersessions.jiomosa.io",
                   "customresourcedefinition.apiextensions.k8s.io/httproutes."
                   "gateway.networking.k8s.io"]


def helm_with_cluster(chart_cluster: ChartCluster, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(chart_cluster.cp.kubeconfig),
           "HELM_CACHE_HOME": str(chart_cluster.cp.workdir / "helm-cache"),
           "HELM_CONFIG_HOME": str(chart_cluster.cp.workdir / "helm-config"),
           "HELM_DATA_HOME": str(chart_cluster.cp.workdir / "helm-data")}
    proc = subprocess.run([str(helm_bin()), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_helm_install_dry_run_and_notes(chart_cluster: ChartCluster) -> None:
    """`helm install --dry-run=server` against the API server (Helm's own checks: kubeVersion,
    existing objects), and the NOTES it prints."""
    ns = chart_cluster.namespace("chart-notes")
    out = helm_with_cluster(chart_cluster, "install", RELEASE, str(CHART), "--namespace", ns,
                            "--dry-run=server")
    notes = out.split("NOTES:", 1)[1]
    assert f"kubectl -n {ns} port-forward svc/jio-jiomosa-streamer 5000:80" in notes
    assert "/api/session/create" in notes and f"helm test {RELEASE}" in notes
    assert "never" in notes and "upgrades" in notes  # the CRD caveat
    out = helm_with_cluster(chart_cluster, "install", RELEASE, str(CHART), "--namespace", ns,
                            "--dry-run=server", "-f",
                            str(CHART / "ci" / "ingress-hash-values.yaml"))
    assert "https://jiomosa.example.com/" in out.split("NOTES:", 1)[1]


def test_the_operators_token_key_survives_upgrades(chart_cluster: ChartCluster) -> None:
    """The chart makes the token key once: rendered against the cluster (`lookup`, as
    `helm upgrade` does), an existing key Secret is kept, not replaced by a new random one
    (which would leave the operator unable to derive the running sessions' tokens)."""
    ns = chart_cluster.namespace("chart-key")

    def key_of(text: str) -> str:
        [secret] = [d for d in docs(text) if d["kind"] == "Secret"
                    and d["metadata"]["name"] == "jio-jiomosa-operator-key"]
        return str(secret["data"]["key"])

    args = ["template", RELEASE, str(CHART), "--namespace", ns, "--dry-run=server"]
    first = helm_with_cluster(chart_cluster, *args)
    assert key_of(helm_with_cluster(chart_cluster, *args)) != key_of(first)  # none yet
    installed = [d for d in docs(first) if d["kind"] == "Secret"]
    chart_cluster.kubectl("apply", "-f", "-", input=dump(installed))
    assert key_of(helm_with_cluster(chart_cluster, *args)) == key_of(first)
    assert key_of(helm_with_cluster(chart_cluster, *args)) == key_of(first)


def test_hook_free_manifests_apply_for_real(chart_cluster: ChartCluster) -> None:
    """Applied for real (nothing runs them: no controllers), the objects are all there and the
    server's copy does not drift from the chart's (`kubectl diff` finds nothing)."""
    ns = chart_cluster.namespace("chart-real")
    manifests = [d for d in docs(render(ns))
                 if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
    chart_cluster.kubectl("apply", "-f", "-", input=dump(manifests))
    try:
        diff = chart_cluster.kubectl("diff", "-f", "-", input=dump(manifests), check=False)
        assert diff.returncode == 0, diff.stdout + diff.stderr
        names = chart_cluster.kubectl("get",
                                      "deploy,sts,svc,sa,role,rolebinding,netpol,pdb,hpa,secret",
                                      "-n", ns, "-o", "name").stdout.split()
        assert "secret/jio-jiomosa-operator-key" in names  # the operator's token key
        assert "deployment.apps/jio-jiomosa-operator" in names
        assert "statefulset.apps/jio-jiomosa-redis" in names
        cluster_scoped = [d for d in manifests if not d["metadata"].get("namespace")]
        assert len(names) == len(manifests) - len(cluster_scoped)
        policies = [f"{d['kind'].lower()}.admissionregistration.k8s.io/{d['metadata']['name']}"
                    for d in cluster_scoped]
        assert len(policies) == 2
        assert chart_cluster.kubectl("get", *[p.split(".", 1)[0] + "/" + p.rsplit("/", 1)[1]
                                              for p in policies], "-o", "name"
                                     ).stdout.split() == policies
    finally:
        chart_cluster.kubectl("delete", "-f", "-", "--wait=false", check=False,
                              input=dump([d for d in manifests
                                          if not d["metadata"].get("namespace")]))


# ----------------------------------------------------------------------------- admission
LIMITS = CHART / "ci" / "limits-values.yaml"
REFUSED = [
    ({"image": "evil.example/chrome:1"}, "spec.image evil.example/chrome:1 is not allowed"),
    ({"image": "registry.example.com/selenium/standalone-chromium:1"}, "spec.image"),
    ({"tolerations": [{"operator": "Exists"}]}, "spec.tolerations"),
    ({"tolerations": [{"key": "gpu", "operator": "Exists"}]}, "spec.tolerations"),
    ({"nodeSelector": {"kubernetes.io/hostname": "control-plane"}}, "spec.nodeSelector"),
    ({"nodeSelector": {"pool": "system"}}, "spec.nodeSelector"),
    ({"resources": {"limits": {"memory": "64Gi"}}}, "spec.resources may set only"),
    ({"resources": {"requests": {"cpu": 8}}}, "spec.resources may set only"),
    ({"resources": {"requests": {"nvidia.com/gpu": 1}}}, "spec.resources may set only"),
    ({"resources": {"limits": {"memory": "0"}}}, "spec.resources may set only"),
    ({"resources": {"requests": {"memory": "-1Gi"}}}, "spec.resources may set only"),
    ({"resources": {"requests": {"memory": "3Gi"}, "limits": {"memory": "2Gi"}}},
     "requests may not be above"),
]
ACCEPTED = [
    {},
    {"image": "jiomosa.local/jiomosa-browser:0.2.0"},  # browser.image
    {"image": "registry.example.com/selenium/standalone-chrome:126.0"},
    {"resources": {"requests": {}}},
    {"resources": {"requests": {"cpu": 2, "memory": "3Gi"}, "limits": {"memory": "3Gi"}}},
    {"nodeSelector": {"pool": "browsers", "topology.kubernetes.io/zone": "z1"},
     "tolerations": [{"key": "browsers", "operator": "Exists", "effect": "NoSchedule"}]},
]


def browser_session(ns: str, name: str, **spec: Any) -> str:
    return json.dumps({"apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession",
                       "metadata": {"name": name, "namespace": ns},
                       "spec": {"url": "https://example.com/", **spec}})


def create(cluster: ChartCluster, manifest: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("create", "--dry-run=server", "-f", "-", input=manifest, check=False)


def test_admission_policy_refuses_what_the_operator_would_fail(
        chart_cluster: ChartCluster) -> None:
    """The chart's ValidatingAdmissionPolicy, applied for real, refuses at the API server the
    BrowserSessions the operator would fail (operator/jiomosa_operator/policy.py, from the same
    values), and only in the namespaces the operator serves."""
    ns = chart_cluster.namespace("chart-vap")
    outside = chart_cluster.namespace("chart-vap-outside")
    manifests = [d for d in docs(render(ns, [LIMITS], sets=[f"sessions.namespace={ns}"]))
                 if d["kind"].startswith("ValidatingAdmissionPolicy")]
    assert [d["kind"] for d in manifests] == ["ValidatingAdmissionPolicy",
                                              "ValidatingAdmissionPolicyBinding"]
    chart_cluster.kubectl("apply", "-f", "-", input=dump(manifests))
    try:
        # The binding takes effect once the API server's policy informer has it.
        first_bad = browser_session(ns, "bad", **REFUSED[0][0])
        eventually(lambda: create(chart_cluster, first_bad).returncode != 0, timeout=30,
                   interval=0.3, what="the admission policy in force")
        for n, (spec, fragment) in enumerate(REFUSED):
            result = create(chart_cluster, browser_session(ns, f"bad-{n}", **spec))
            assert result.returncode != 0, f"accepted: {spec}"
            assert "denied request" in result.stderr and fragment in result.stderr, (
                spec, result.stderr)
            # The schema lets each through: outside the served namespaces it is created.
            assert create(chart_cluster, browser_session(outside, f"bad-{n}", **spec)
                          ).returncode == 0, spec
        for n, spec in enumerate(ACCEPTED):
            result = create(chart_cluster, browser_session(ns, f"good-{n}", **spec))
            assert result.returncode == 0, (spec, result.stderr)
    finally:
        chart_cluster.kubectl("delete", "-f", "-", "--wait=false", input=dump(manifests),
                              check=False)
