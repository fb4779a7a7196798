"""The tests play the kubelet: for every pod the operator creates, run the browser it describes
on this machine and report it through the pod's status subresource, as a kubelet would.

All pods share the loopback network, so each gets its own port: the kubelet reports
``podIP: 127.0.0.1`` and annotates the pod with its port, which the operator honours under
``JIOMOSA_OPERATOR_TRUST_PORT_ANNOTATION=1`` (tests only).

* An agent pod (its container's args start with ``browser``: the ``jiomosa-browser`` image) runs
  the real ``jiomosa browser`` process with the pod's args (its port replaced by a free one,
  ``jiomosa.io/agent-port``) and the pod's environment, ``secretKeyRef`` values resolved through
  the API as a kubelet does (a missing Secret: ``CreateContainerConfigError`` until it exists).
  It is Ready once its ``/readyz`` answers 200, as the pod's readiness probe would say.
* A Selenium standalone pod serves WebDriver on its port 4444. Here it is a
  ``chromedriver --port=N`` (WebDriver-compatible; ``start_remote`` falls back to its
  ``debuggerAddress`` for CDP), announced by ``jiomosa.io/webdriver-port``.

Behaviour by image (the operator copies ``spec.image`` into the pod):

* anything containing ``registry.invalid`` -> the image cannot be pulled (ErrImagePull, then
  ImagePullBackOff), like a kubelet facing a missing image;
* anything else -> a browser.

``hold(namespace)`` keeps new pods of a namespace Pending until ``release(namespace)``.
``fail(namespace, pod, reason, exit_code)`` kills a pod's browser and reports the container as
terminated (OOMKilled, Error...), the pod Failed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane import ControlPlane
from helpers import descendants

SELECTOR = "app.kubernetes.io/managed-by=jiomosa-operator"
PORT_ANNOTATION = "jiomosa.io/webdriver-port"
AGENT_PORT_ANNOTATION = "jiomosa.io/agent-port"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    image: str
    container: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    state: str = "new"
    events: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """An agent pod's environment as its process got it (secretKeyRef values resolved)."""

    log_path: Path | None = None
    home: Path | None = None

    @property
    def agent(self) -> bool:
        return list(self.container.get("args") or [])[:1] == ["browser"]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def commands(self) -> list[str]:
        """The WebDriver commands the pod's chromedriver served (InitSession, Quit, ...)."""
        if self.log_path is None:
            return []
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "] COMMAND " in line:
                out.append(line.split("] COMMAND ", 1)[1].split(" ", 1)[0])
        return out

    def stop(self) -> None:
        """Kill everything the pod runs (a container's processes go with it, whatever their
        process group: the agent starts Chromium in a session of its own)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        below = descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # chromedriver/the agent and its group
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)


class FakeKubelet:
    """Polls the API for the operator's pods and runs them."""

    def __init__(self, cp: ControlPlane, log_dir: Path, chromedriver: str = "/usr/bin/chromedriver",
                 interval: float = 0.2) -> None:
        self.cp = cp
        self.log_dir = log_dir
        self.chromedriver = chromedriver
        self.interval = interval
        self.pods: dict[str, RunningPod] = {}  # by uid
        self.held: set[str] = set()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)

    # ------------------------------------------------------------------ control
    def start(self) -> FakeKubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            pod.stop()

    def hold(self, namespace: str) -> None:
        self.held.add(namespace)

    def release(self, namespace: str) -> None:
        self.held.discard(namespace)

    def running(self, namespace: str) -> list[RunningPod]:
        with self._lock:
            return [p for p in self.pods.values() if p.namespace == namespace and p.proc]

    def pod(self, namespace: str, name: str) -> RunningPod:
        with self._lock:
            for p in self.pods.values():
                if p.namespace == namespace and p.name == name:
                    return p
        raise KeyError(f"{namespace}/{name}")

    def fail(self, namespace: str, name: str, reason: str = "OOMKilled",
             exit_code: int = 137) -> None:
        """The browser container dies (e.g. the OOM killer): report it like a kubelet."""
        pod = self.pod(namespace, name)
        pod.stop()
        pod.state = "failed"
        started = _now()
        self._patch_status(pod, {
            "phase": "Failed",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodFailed",
                 "lastTransitionTime": started},
                {"type": "ContainersReady", "status": "False", "reason": "PodFailed",
                 "lastTransitionTime": started},
            ],
            "containerStatuses": [self._container(pod, ready=False, state={
                "terminated": {"exitCode": exit_code, "reason": reason, "startedAt": started,
                               "finishedAt": started}})],
        })

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        path = "/api/v1/pods?labelSelector=" + urllib.parse.quote(SELECTOR)
        while not self._stop.is_set():
            try:
                status, body = self.cp.request("GET", path, timeout=10)
                if status == 200:
                    self._sync(body.get("items", []))
            except Exception as exc:  # keep playing; the test sees errors in .errors
                self.errors.append(repr(exc))
            self._stop.wait(self.interval)

    def _sync(self, items: list[dict[str, Any]]) -> None:
        seen = set()
        for item in items:
            meta = item["metadata"]
            uid = meta["uid"]
            seen.add(uid)
            with self._lock:
                pod = self.pods.get(uid)
                if pod is None:
                    container = item["spec"]["containers"][0]
                    pod = RunningPod(meta["namespace"], meta["name"], uid, container["image"],
                                     container=container)
                    self.pods[uid] = pod
            if meta.get("deletionTimestamp"):
                if pod.state != "gone":
                    pod.stop()
                    pod.state = "gone"
                    # The kubelet confirms the graceful deletion once the containers are gone.
                    self.cp.request(
                        "DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
                        {"gracePeriodSeconds": 0})
                continue
            if pod.state == "new" and pod.namespace not in self.held:
                pod.state = "starting"
                threading.Thread(target=self._run_pod, args=(pod,), daemon=True,
                                 name=f"pod-{pod.name}").start()
        with self._lock:
            gone = [p for uid, p in self.pods.items() if uid not in seen]
        for pod in gone:
            if pod.proc is not None:
                pod.stop()
            pod.state = "gone"

    def _run_pod(self, pod: RunningPod) -> None:
        try:
            if "registry.invalid" in pod.image:
                self._image_pull_error(pod)
            elif pod.agent:
                self._start_agent(pod)
            else:
                self._start_browser(pod)
        except Exception as exc:
            self.errors.append(f"{pod.name}: {exc!r}")

    def _image_pull_error(self, pod: RunningPod) -> None:
        message = (f'failed to pull and unpack image "{pod.image}": failed to resolve reference: '
                   "dial tcp: lookup registry.invalid: no such host")
        for reason in ("ErrImagePull", "ImagePullBackOff"):
            if pod.state == "gone":
                return
            self._patch_status(pod, {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True",
                                "lastTransitionTime": _now()}],
                "containerStatuses": [self._container(pod, ready=False, state={
                    "waiting": {"reason": reason, "message": message}})],
            })
            time.sleep(1.0)

    def _start_browser(self, pod: RunningPod) -> None:
        pod.port = free_port()
        pod.log_path = self.log_dir / f"chromedriver-{pod.namespace}-{pod.name}.log"
        log = open(pod.log_path, "wb")
        pod.proc = subprocess.Popen(
            [self.chromedriver, f"--port={pod.port}", "--log-level=INFO"], stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True)
        started = _now()
        # The annotation first: the operator must know the port once the pod is ready.
        self.cp.request(
            "PATCH", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
            {"metadata": {"annotations": {PORT_ANNOTATION: str(pod.port)}}},
            content_type="application/merge-patch+json")
        # Container started, readiness probe not passing yet.
        self._patch_status(pod, self._running(pod, started, ready=False))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and pod.proc is not None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{pod.port}/status", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        if pod.proc is None or pod.state == "gone":
            return
        pod.state = "running"
        self._patch_status(pod, self._running(pod, started, ready=True))

    def _resolve_env(self, pod: RunningPod) -> dict[str, str] | None:
        """The container's env, ``secretKeyRef`` values read through the API; None (and the
        container reported waiting, as a kubelet does) while a Secret is missing."""
        out: dict[str, str] = {}
        for entry in pod.container.get("env") or []:
            if "value" in entry:
                out[entry["name"]] = str(entry["value"])
                continue
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
            code, body = self.cp.request(
                "GET", f"/api/v1/namespaces/{pod.namespace}/secrets/{ref.get('name')}")
            value = (body.get("data") or {}).get(ref.get("key")) if code == 200 else None
            if value is None:
                self._patch_status(pod, {
                    "phase": "Pending",
                    "containerStatuses": [self._container(pod, ready=False, state={
                        "waiting": {"reason": "CreateContainerConfigError",
                                    "message": f'secret "{ref.get("name")}" not found'}})]})
                return None
            out[entry["name"]] = base64.b64decode(value).decode()
        return out

    def _start_agent(self, pod: RunningPod) -> None:
        """``jiomosa browser`` with the pod's args and env, on a port of its own."""
        deadline = time.monotonic() + 30
        env = self._resolve_env(pod)
        while env is None and time.monotonic() < deadline and pod.state != "gone":
            time.sleep(0.5)
            env = self._resolve_env(pod)
        if env is None:
            return
        pod.env = env
        pod.port = free_port()
        # A short path of its own (Chromium's socket paths must fit in 108 bytes).
        home = Path(tempfile.mkdtemp(prefix="jpod-"))
        pod.home = home
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("JIOMOSA_") and k != "KUBECONFIG"}
        args = list(pod.container.get("args") or [])
        if "--port" in args:
            args[args.index("--port") + 1] = str(pod.port)
        pod.log_path = self.log_dir / f"agent-{pod.namespace}-{pod.name}.log"
        log = open(pod.log_path, "wb")
        pod.proc = subprocess.Popen(
            [sys.executable, "-m", "jiomosa", *args, "--host", "127.0.0.1"],
            env={**base, "HOME": str(home), "TMPDIR": str(home), "JIOMOSA_LOG_FORMAT": "text",
                 **env},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if pod.state == "gone":  # deleted while it started
            pod.stop()
            return
        started = _now()
        self.cp.request(
            "PATCH", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
            {"metadata": {"annotations": {AGENT_PORT_ANNOTATION: str(pod.port)}}},
            content_type="application/merge-patch+json")
        self._patch_status(pod, self._running(pod, started, ready=False))
        # The readiness probe: GET /readyz on the pod's port.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pod.proc is not None:
            try:
                with urllib.request.urlopen(pod.base + "/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        if pod.proc is None or pod.state == "gone":
            return
        pod.state = "running"
        self._patch_status(pod, self._running(pod, started, ready=True))

    # ------------------------------------------------------------------ status documents
    def _container(self, pod: RunningPod, ready: bool, state: dict[str, Any]) -> dict[str, Any]:
        return {"name": "browser", "image": pod.image, "imageID": "", "ready": ready,
                "started": "running" in state, "restartCount": 0, "state": state}

    def _running(self, pod: RunningPod, started: str, ready: bool) -> dict[str, Any]:
        flag = "True" if ready else "False"
        return {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": started,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
                {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": _now()},
                {"type": "Ready", "status": flag, "lastTransitionTime": _now()},
            ],
            "containerStatuses": [self._container(pod, ready, {"running": {"startedAt": started}})],
        }

    def _patch_status(self, pod: RunningPod, status: dict[str, Any]) -> None:
        code, body = self.cp.request(
            "PATCH", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
            {"status": status}, content_type="application/merge-patch+json")
        if code != 200 and code != 404:
            self.errors.append(f"status of {pod.name}: {code} {json.dumps(body)[:300]}")
