"""The local control plane is a real Kubernetes API: CRDs, Pods (and their
status subresource, as a kubelet would write it) and RBAC all work."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controlplane import UNPRIVILEGED_USER, ControlPlane

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.jiomosa.io
spec:
  group: test.jiomosa.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer, minimum: 1}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"""

WIDGET = """
apiVersion: test.jiomosa.io/v1
kind: Widget
metadata: {name: w1, namespace: crd-test}
spec: {size: 3}
"""

POD = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: pod-test, labels: {app: web}}
spec:
  containers:
    - name: web
      image: registry.invalid/jiomosa/web:1
"""


def eventually(
    attempt: Callable[[], subprocess.CompletedProcess[str]], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Retry a kubectl call until it succeeds (for things that propagate)."""
    deadline = time.monotonic() + timeout
    while True:
        result = attempt()
        if result.returncode == 0 or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return result
        time.sleep(0.5)


def kubectl_json(cp: ControlPlane, *args: str, kubeconfig: Path | None = None) -> Any:
    return json.loads(cp.run_kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout)


def test_version_and_readyz(control_plane: ControlPlane) -> None:
    version = kubectl_json(control_plane, "version")
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    status, body = control_plane.request("GET", "/readyz")
    assert (status, body) == (200, "ok")


def test_custom_resource_definition(control_plane: ControlPlane) -> None:
    cp = control_plane
    cp.ensure_namespace("crd-test")
    cp.run_kubectl("apply", "-f", "-", input=CRD)
    cp.run_kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.jiomosa.io", "--timeout=60s"
    )
    # Discovery may lag a moment behind Established.
    eventually(lambda: cp.run_kubectl("apply", "-f", "-", input=WIDGET, check=False))

    widget = kubectl_json(cp, "get", "widget", "w1", "-n", "crd-test")
    assert widget["spec"] == {"size": 3}

    # Schema validation is enforced by the apiserver.
    bad = cp.run_kubectl(
        "apply", "-f", "-", input=WIDGET.replace("size: 3", "size: 0"), check=False
    )
    assert bad.returncode != 0
    assert "spec.size" in bad.stderr

    # The status subresource, as an operator would write it.
    cp.run_kubectl(
        "patch", "widget", "w1", "-n", "crd-test", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Ready"}}),
    )  # fmt: skip
    assert kubectl_json(cp, "get", "widget", "w1", "-n", "crd-test")["status"] == {"phase": "Ready"}


def test_pod_status_written_like_a_kubelet(control_plane: ControlPlane) -> None:
    cp = control_plane
    cp.ensure_namespace("pod-test")
    cp.run_kubectl("apply", "-f", "-", input=POD)

    pod = kubectl_json(cp, "get", "pod", "web", "-n", "pod-test")
    assert pod["status"]["phase"] == "Pending"  # no scheduler, no kubelet
    assert "nodeName" not in pod["spec"]

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": "10.244.0.7",
        "podIPs": [{"ip": "10.244.0.7"}],
        "startTime": now,
        "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ],
        "containerStatuses": [
            {
                "name": "web",
                "image": "registry.invalid/jiomosa/web:1",
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
        ],
    }
    cp.run_kubectl(
        "patch", "pod", "web", "-n", "pod-test", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip

    pod = kubectl_json(cp, "get", "pod", "web", "-n", "pod-test")
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"] == "10.244.0.7"
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    # The same object through the REST helper.
    code, body = cp.request("GET", "/api/v1/namespaces/pod-test/pods/web")
    assert code == 200 and body["status"]["phase"] == "Running"

    # A Pod never bound to a node is deleted at once (no kubelet to wait for).
    cp.run_kubectl("delete", "pod", "web", "-n", "pod-test", "--wait=true", "--timeout=30s")
    code, _ = cp.request("GET", "/api/v1/namespaces/pod-test/pods/web")
    assert code == 404


def test_rbac_refuses_unprivileged_users(control_plane: ControlPlane) -> None:
    cp = control_plane
    cp.ensure_namespace("rbac-test")

    # A static token of a user without any RoleBinding: authenticated, then refused.
    code, body = cp.request("GET", "/api/v1/namespaces/rbac-test/pods", token=cp.unprivileged_token)
    assert code == 403, body
    assert body["reason"] == "Forbidden"
    assert UNPRIVILEGED_USER in body["message"]

    kubeconfig = cp.kubeconfig_for_token(cp.unprivileged_token, user=UNPRIVILEGED_USER)
    denied = cp.run_kubectl("get", "pods", "-n", "rbac-test", kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr

    # A bad token is not even authenticated.
    code, _ = cp.request("GET", "/api/v1/namespaces/rbac-test/pods", token="not-a-token")
    assert code == 401

    # A ServiceAccount is refused until a RoleBinding grants it access.
    sa_config = cp.kubeconfig_for_service_account("rbac-test", "operator")
    assert (
        cp.run_kubectl(
            "get", "pods", "-n", "rbac-test", kubeconfig=sa_config, check=False
        ).returncode
        != 0
    )
    # (Not the built-in view/edit/admin ClusterRoles: they are aggregated, and
    # the aggregation controller lives in the controller-manager, so here
    # they have no rules.)
    cp.run_kubectl(
        "create", "role", "pod-reader", "-n", "rbac-test", "--verb=get,list,watch",
        "--resource=pods",
    )  # fmt: skip
    cp.run_kubectl(
        "create", "rolebinding", "operator-pods", "-n", "rbac-test", "--role=pod-reader",
        "--serviceaccount=rbac-test:operator",
    )  # fmt: skip
    # The RBAC authorizer reads bindings through an informer: allow it a moment.
    eventually(
        lambda: cp.run_kubectl("get", "pods", "-n", "rbac-test", kubeconfig=sa_config, check=False)
    )
    denied = cp.run_kubectl("get", "pods", "-n", "default", kubeconfig=sa_config, check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr

    # Any user/groups via a client certificate signed by the control plane's CA.
    user_config = cp.kubeconfig_for_user("alice", groups=["jiomosa:devs"])
    whoami = kubectl_json(cp, "auth", "whoami", kubeconfig=user_config)
    assert whoami["status"]["userInfo"]["username"] == "alice"
    assert "jiomosa:devs" in whoami["status"]["userInfo"]["groups"]
    can = cp.run_kubectl(
        "auth", "can-i", "create", "pods", "-n", "rbac-test", kubeconfig=user_config, check=False
    )
    assert can.stdout.strip() == "no"
