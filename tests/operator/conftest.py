"""Fixtures of the operator tests: a real control plane (tests/kube/controlplane.py) with the
CRD and RBAC applied, a kubelet played by the tests, and the operator as a real process running
under its least-privilege ClusterRole."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "kube"))
sys.path.insert(0, str(HERE))

from controlplane import ControlPlane, ControlPlaneError, built_once  # noqa: E402
from kubelet import FakeKubelet  # noqa: E402
from op_harness import CRD, RBAC, Kube, OperatorProcess  # noqa: E402

_counter = itertools.count(1)




def pytest_collection_finish(session: pytest.Session) -> None:
    # A cold build takes minutes: do it before the first test's timeout starts.
    if session.config.option.collectonly:
        return
    if any("kube" in getattr(item, "fixturenames", ()) for item in session.items):
        try:
            built_once()
        except ControlPlaneError:
            pass  # reported by the fixture


# Every request of a service account (the operator's and the streamers') is audited at its
# first stage, RequestReceived, which the API server writes (blocking mode) before it handles
# the request: whatever a process was answered, its calls are in the log.
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                "omitStages": ["ResponseStarted", "ResponseComplete", "Panic"],
                "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
                          {"level": "None"}]}


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """A control plane with the BrowserSession CRD and the RBAC roles applied, auditing what
    service accounts ask of it (``Kube.api_calls``)."""
    audit = tmp_path_factory.mktemp("audit")
    (audit / "policy.json").write_text(json.dumps(AUDIT_POLICY))
    args = [f"--audit-policy-file={audit / 'policy.json'}",
            f"--audit-log-path={audit / 'audit.log'}", "--audit-log-mode=blocking",
            "--audit-log-format=json"]
    with ControlPlane(built_once(), extra_apiserver_args=args) as cp:
        k = Kube(cp, audit / "audit.log")
        k.kubectl("apply", "-f", str(CRD))
        k.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                  "crd/browsersessions.jiomosa.io")
        k.kubectl("apply", "-f", str(RBAC))
        yield k


@pytest.fixture(scope="session")
def kubelet(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubelet]:
    playing = FakeKubelet(kube.cp, tmp_path_factory.mktemp("kubelet")).start()
    yield playing
    playing.stop()
    assert not playing.errors, playing.errors


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> str:
    """A fresh namespace per test (namespaces are never deleted: no controller-manager)."""
    name = f"t{next(_counter)}-{request.node.name.lower().replace('_', '-')}"[:40].rstrip("-")
    kube.cp.ensure_namespace(name)
    return name


def identity(kube: Kube, namespace: str, account: str, role: str) -> Path:
    """A kubeconfig for service account ``account`` bound to ClusterRole ``role`` in
    ``namespace`` only (a RoleBinding)."""
    kube.cp.ensure_service_account(namespace, account)
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": f"{account}-{role}", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }
    kube.apply(json.dumps(binding))
    return kube.cp.kubeconfig_for_service_account(namespace, account)


@pytest.fixture
def start_operator(kube: Kube, kubelet: FakeKubelet, namespace: str,
                   tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operators serving ``namespace`` as its service account; stopped after the test."""
    kubeconfig = identity(kube, namespace, "jiomosa-operator", "jiomosa-operator")
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        proc = OperatorProcess(kubeconfig, namespace, tmp_path, env)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> OperatorProcess:
    return start_operator()


@pytest.fixture
def streamer_kubeconfig(kube: Kube, namespace: str) -> Path:
    return identity(kube, namespace, "jiomosa-streamer", "jiomosa-streamer")


@pytest.fixture
def identity_for(kube: Kube, namespace: str) -> Callable[[str, str], Path]:
    """``identity(kube, namespace, account, role)`` for the test's namespace."""
    return lambda account, role: identity(kube, namespace, account, role)
