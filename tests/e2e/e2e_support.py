"""The cluster the e2e tests run against, and the test pages it serves (tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The local streamer's test pages (tests/helpers.py), served here from a pod: the colour page
# is black until clicked, white after the first click, and its title counts the clicks.
from helpers import ANIM_PAGE
from helpers import CLICK_COLOR_PAGE as CLICK_PAGE

ROOT = Path(__file__).resolve().parents[2]


def _kubectl_binary() -> str:
    given = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if given:
        return given
    built = sorted((Path(os.environ.get("JIOMOSA_CACHE") or "/var/cache/jiomosa")
                    / "controlplane").glob("v*/kubectl"))
    return str(built[-1]) if built else "kubectl"


@dataclass
class Cluster:
    kubeconfig: str
    namespace: str
    release: str
    timeout: float
    front: str = ""
    """The local node's nginx front (http://host:port); '' on other clusters."""
    state: Path | None = None
    """The local node's state directory (the front's access log is there)."""

    @property
    def fullname(self) -> str:
        return self.release if "jiomosa" in self.release else f"{self.release}-jiomosa"

    @property
    def access_log(self) -> Path | None:
        return self.state / "front" / "access.log" if self.state else None

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([_kubectl_binary(), "--kubeconfig", self.kubeconfig,
                               "-n", self.namespace, *args], input=input,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    def get(self, *args: str) -> Any:
        out = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def wait(self, probe: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = probe()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"{what} not within {timeout:.0f} s (last: {str(last)[:500]})")

    def wait_phase(self, name: str, phases: tuple[str, ...] = ("Ready", "Failed"),
                   timeout: float | None = None) -> dict[str, Any]:
        def phase() -> dict[str, Any] | None:
            bs = self.get("browsersession", name)
            return bs if bs and (bs.get("status") or {}).get("phase") in phases else None
        return dict(self.wait(phase, timeout or self.timeout, f"{name} in {phases}"))

    def viewer_token(self, bs: dict[str, Any]) -> str:
        """A kubectl-made session's viewer token, read from its Secret as its author would."""
        secret = self.get("secret", bs["status"]["viewer"]["secretName"])
        import base64
        return base64.b64decode(secret["data"]["token"]).decode()

    def events(self, name: str) -> list[tuple[str, str, str]]:
        items = self.get("events", "--field-selector", f"involvedObject.name={name}")
        return [(e.get("type", ""), e.get("reason", ""), e.get("message", ""))
                for e in (items or {}).get("items", [])]

    def session_pods(self, uid: str) -> list[dict[str, Any]]:
        pods = self.get("pods", "-l", f"jiomosa.io/session-uid={uid}")
        return list((pods or {}).get("items", []))

    def streamer_pods(self) -> dict[str, str]:
        """pod IP -> name of the Running streamer pods."""
        pods = self.get("pods", "-l", "app.kubernetes.io/component=streamer")
        return {p["status"]["podIP"]: p["metadata"]["name"] for p in pods["items"]
                if p["status"].get("podIP") and p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")}

    def upstreams_of(self, session_id: str) -> list[str]:
        """The streamer addresses (ip:port) the front sent each request naming ``session_id``
        to, in order (from its access log)."""
        log = self.access_log
        assert log is not None, "only the local node's front keeps an access log"
        found = []
        for line in log.read_text(errors="replace").splitlines():
            if session_id in line:
                # front.py logs JSON ("upstream_addr":"ip:port"); `upstream=ip:port` also read.
                match = re.search(r'"upstream_addr":"([^"]*)"|upstream=(\S+)', line)
                addr = (match.group(1) or match.group(2) or "") if match else ""
                if addr and addr != "-":
                    found.append(addr.split(",")[-1].strip())
        return found


class PageSite:
    """The e2e test pages, served inside the cluster by a pod of the jiomosa image
    (``python3 -m http.server``) behind the Service ``e2e-pages``."""

    NAME = "e2e-pages"

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    @property
    def base(self) -> str:
        return f"http://{self.NAME}.{self.cluster.namespace}.svc.cluster.local"

    def url(self, path: str) -> str:
        return self.base + path

    def deploy(self) -> None:
        labels = {"app.kubernetes.io/name": self.NAME}
        image = self._jiomosa_image()
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": self.NAME},
                 "data": {"color.html": CLICK_PAGE, "anim.html": ANIM_PAGE,
                          "static.html": "<!doctype html><title>static</title><p>static</p>"}},
                {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": self.NAME, "labels": labels},
                 "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                          "template": {"metadata": {"labels": labels}, "spec": {
                              "automountServiceAccountToken": False,
                              "containers": [{
                                  "name": "pages", "image": image["image"],
                                  "imagePullPolicy": image["imagePullPolicy"],
                                  "command": ["python3", "-m", "http.server", "8080",
                                              "--directory", "/pages"],
                                  "ports": [{"containerPort": 8080}],
                                  "readinessProbe": {"httpGet": {"path": "/static.html",
                                                                 "port": 8080},
                                                     "periodSeconds": 1},
                                  "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                                                "limits": {"memory": "96Mi"}},
                                  "securityContext": {"allowPrivilegeEscalation": False,
                                                      "runAsNonRoot": True,
                                                      "runAsUser": 10001,
                                                      "capabilities": {"drop": ["ALL"]}},
                                  "volumeMounts": [{"name": "pages", "mountPath": "/pages"}]}],
                              "volumes": [{"name": "pages",
                                           "configMap": {"name": self.NAME}}]}}}},
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": self.NAME},
                 "spec": {"selector": labels,
                          "ports": [{"port": 80, "targetPort": 8080}]}},
            ]}))
        self.cluster.kubectl("rollout", "status", f"deployment/{self.NAME}", "--timeout=120s",
                             timeout=150)
        self._wait_reachable()

    def _wait_reachable(self, timeout: float = 90.0) -> None:
        """Until the Service's name resolves, inside the cluster, to its current address and
        answers: a Service made again within CoreDNS's cache time (30 s) still resolves to the
        old address for a while, and a new one answers once kube-proxy has its endpoint (a
        browser sent there meanwhile fails its navigation)."""
        address = self.cluster.get("service", self.NAME)["spec"]["clusterIP"]
        host = f"{self.NAME}.{self.cluster.namespace}.svc.cluster.local"
        probe = ("import socket, sys, urllib.request\n"
                 f"if socket.gethostbyname('{host}') != '{address}': sys.exit(1)\n"
                 f"urllib.request.urlopen('http://{host}/static.html', timeout=5)\n")
        self.cluster.wait(
            lambda: self.cluster.kubectl("exec", f"deployment/{self.NAME}", "--", "python3",
                                         "-c", probe, check=False).returncode == 0,
            timeout, f"{host} resolving to {address} and answering", interval=1.0)

    def remove(self) -> None:
        self.cluster.kubectl("delete", "deployment,service,configmap", self.NAME,
                             "--ignore-not-found", check=False)

    def _jiomosa_image(self) -> dict[str, str]:
        """The streamers' image (it has python3) as the release runs it."""
        deployment = self.cluster.get("deployment", f"{self.cluster.fullname}-streamer")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return {"image": container["image"],
                "imagePullPolicy": container.get("imagePullPolicy", "IfNotPresent")}
