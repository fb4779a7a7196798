"""Test support for the operator: the operator as a real process, and API helpers."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from controlplane import ControlPlane
from helpers import ServerProcess
from kubelet import free_port

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "browsersession.yaml"
RBAC = ROOT / "operator" / "deploy" / "rbac.yaml"
SESSIONS = "/apis/jiomosa.io/v1alpha1/namespaces/{ns}/browsersessions"
# The operators of the tests derive their agent pods' tokens from this key (the chart makes a
# random one per installation).
TOKEN_KEY = "test-operator-token-key-0123456789abcdef"

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1,
               what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


class Kube:
    """Admin access to the test cluster, in the shapes the tests need."""

    def __init__(self, cp: ControlPlane, audit_log: Path | None = None) -> None:
        self.cp = cp
        self.audit_log = audit_log

    def audit_mark(self) -> int:
        """Where the audit log ends now (``api_calls`` counts from there)."""
        assert self.audit_log is not None, "this control plane does not audit"
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def api_calls(self, since: int, user: str, ignore_verbs: tuple[str, ...] = ("watch",)
                  ) -> list[str]:
        """``verb path`` of every request ``user`` made since ``since`` (audit log), but
        ``ignore_verbs`` (a watch that goes on is no call per request)."""
        assert self.audit_log is not None, "this control plane does not audit"
        with self.audit_log.open("rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            event = json.loads(line)
            if (event.get("user") or {}).get("username") != user:
                continue
            if event.get("verb") in ignore_verbs:
                continue
            out.append(f"{event.get('verb')} {event.get('requestURI')}")
        return out

    def secret_value(self, ns: str, name: str, key: str) -> str:
        status, body = self.cp.request("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
        assert status == 200, body
        return base64.b64decode(body["data"][key]).decode()

    def viewer_token(self, ns: str, name: str, timeout: float = 30.0) -> str:
        """The viewer token of a kubectl-made BrowserSession, read as its author would."""
        viewer = eventually(lambda: ((self.session(ns, name) or {}).get("status") or {}).get(
            "viewer"), timeout, what=f"{name}'s viewer token")
        return self.secret_value(ns, viewer["secretName"], "token")

    def kubectl(self, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cp.run_kubectl(*args, input=input, check=check)

    def session(self, ns: str, name: str) -> dict[str, Any] | None:
        status, body = self.cp.request("GET", SESSIONS.format(ns=ns) + "/" + name)
        return body if status == 200 else None

    def sessions(self, ns: str) -> list[dict[str, Any]]:
        status, body = self.cp.request("GET", SESSIONS.format(ns=ns))
        assert status == 200, body
        return list(body["items"])

    def phase(self, ns: str, name: str) -> str | None:
        bs = self.session(ns, name)
        return None if bs is None else (bs.get("status") or {}).get("phase")

    def wait_phase(self, ns: str, name: str, phase: str, timeout: float = 30.0) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            bs = self.session(ns, name)
            return bs if bs and (bs.get("status") or {}).get("phase") == phase else None
        try:
            return eventually(probe, timeout, what=f"{name} {phase}")
        except AssertionError:
            raise AssertionError(f"{name} never became {phase}: "
                                 f"{json.dumps(self.session(ns, name), indent=1)}\n"
                                 f"events: {self.events(ns)}") from None

    def patch_session(self, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        status, body = self.cp.request("PATCH", SESSIONS.format(ns=ns) + "/" + name, patch,
                                       content_type="application/merge-patch+json")
        assert status == 200, body
        return dict(body)

    def pods(self, ns: str) -> list[dict[str, Any]]:
        status, body = self.cp.request("GET", f"/api/v1/namespaces/{ns}/pods")
        assert status == 200, body
        return list(body["items"])

    def pod(self, ns: str, name: str) -> dict[str, Any] | None:
        status, body = self.cp.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        return body if status == 200 else None

    def events(self, ns: str, name: str | None = None) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events about BrowserSessions, oldest first."""
        status, body = self.cp.request("GET", f"/api/v1/namespaces/{ns}/events")
        assert status == 200, body
        items = [e for e in body["items"]
                 if e["involvedObject"].get("kind") == "BrowserSession"
                 and (name is None or e["involvedObject"].get("name") == name)]
        items.sort(key=lambda e: (e.get("firstTimestamp") or e.get("eventTime") or "",
                                  e["metadata"].get("creationTimestamp", "")))
        return [(e["type"], e["reason"], e.get("message", "")) for e in items]

    def apply(self, manifest: str) -> None:
        self.kubectl("apply", "-f", "-", input=manifest)


def session_manifest(name: str, ns: str, **spec: Any) -> str:
    return json.dumps({"apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession",
                       "metadata": {"name": name, "namespace": ns}, "spec": spec})


class OperatorProcess(ServerProcess):
    """``jiomosa operator`` as a real process, serving one namespace."""

    name = "operator"

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "JIOMOSA_LOG_FORMAT": "json",
            "JIOMOSA_LOG_LEVEL": "INFO",
            "JIOMOSA_OPERATOR_NAMESPACES": namespace,
            "JIOMOSA_OPERATOR_TRUST_PORT_ANNOTATION": "1",
            "JIOMOSA_OPERATOR_ALLOW_HOSTS": "127.0.0.5",
            # The image the test kubelet fails to pull (ErrImagePull tests) is allowed.
            "JIOMOSA_OPERATOR_ALLOWED_IMAGES": "registry.invalid/*",
            "JIOMOSA_OPERATOR_POLL_INTERVAL": "0.3",
            "JIOMOSA_OPERATOR_CHECK_INTERVAL": "0.5",
            "JIOMOSA_OPERATOR_LIVENESS_HOST": "127.0.0.1",
            "JIOMOSA_OPERATOR_LIVENESS_PORT": str(self.port),
            "JIOMOSA_OPERATOR_TOKEN_KEY": TOKEN_KEY,
            # No warm pool unless a test asks for one (tests/operator/test_operator_pool.py).
            "JIOMOSA_OPERATOR_WARM_POOL": "0",
            **(env or {}),
        }
        self.log_dir = log_dir
        self.log_path = log_dir / f"operator-{self.port}.log"

    @property
    def liveness_port(self) -> int:
        return self.port

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def use_port(self, port: int) -> None:
        self.port = port
        self.env["JIOMOSA_OPERATOR_LIVENESS_PORT"] = str(port)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jiomosa", "operator"]

    def health_url(self) -> str:
        return self.liveness_url

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the operator dies mid-work."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
