"""The installed chart, end to end on a real cluster: the components run, a device's session
streams frames (REST, polling and Socket.IO with ?session_id=), a BrowserSession made with
kubectl is viewed by name, and everything is cleaned up."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from e2e_support import Cluster
from helpers import SioProbe


def http(method: str, url: str, body: Any = None, timeout: float = 330.0) -> tuple[int, str, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def is_jpeg(result: tuple[int, str, bytes]) -> bool:
    status, ctype, body = result
    return status == 200 and ctype.startswith("image/jpeg") and body[:2] == b"\xff\xd8"


def test_components_are_running(cluster: Cluster) -> None:
    for kind, name in (("deployment", f"{cluster.fullname}-operator"),
                       ("deployment", f"{cluster.fullname}-streamer"),
                       ("statefulset", f"{cluster.fullname}-redis")):
        cluster.kubectl("rollout", "status", f"{kind}/{name}", "--timeout=300s", timeout=330)
    crd = cluster.get("crd", "browsersessions.jiomosa.io")
    assert crd and any(c["type"] == "Established" and c["status"] == "True"
                       for c in crd["status"]["conditions"])
    policies = {p["metadata"]["name"] for p in cluster.get("networkpolicy")["items"]}
    assert f"{cluster.fullname}-browser" in policies


async def test_a_device_session_streams_frames(cluster: Cluster, streamer_url: str) -> None:
    body = {"url": cluster.url} if cluster.url else {}
    status, _, raw = http("POST", streamer_url + "/api/session/create",
                          {**body, "viewport": {"width": 480, "height": 360}},
                          timeout=cluster.timeout + 30)
    assert status == 201, raw[:500]
    created = json.loads(raw)
    sid = created["session_id"]
    assert f"?session_id={sid}" in created["websocket_url"]

    # Its browser is a BrowserSession with a hardened pod of its own.
    # (the newest one a streamer made: sessions of other clients may exist)
    made = cluster.get("browsersessions", "-l",
                       "app.kubernetes.io/created-by=jiomosa-streamer")["items"]
    bs = max(made, key=lambda s: s["metadata"]["creationTimestamp"])
    assert bs["status"]["phase"] == "Ready"
    assert bs["spec"]["viewport"]["width"] == 480
    pod = cluster.get("pod", bs["status"]["podName"])
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["automountServiceAccountToken"] is False

    # Polling and Socket.IO (the way RTOS and WebView clients connect).
    cluster.wait(lambda: is_jpeg(http("GET", f"{streamer_url}/api/session/{sid}/frame")), 60,
                 "a polled JPEG frame")
    async with SioProbe(streamer_url, f"session_id={sid}") as probe:
        frame = await probe.subscribe(sid)
        assert frame["width"] == 480 and bytes(frame["image"][:2]) == b"\xff\xd8"
        await probe.emit("input:click", {"x": 10, "y": 10})
        ack = await probe.wait_for("input:acknowledged", timeout=20)
        assert ack["type"] == "click"

    status, _, raw = http("POST", f"{streamer_url}/api/session/{sid}/close", {})
    assert status == 200, raw[:300]
    name, pod_name = bs["metadata"]["name"], bs["status"]["podName"]
    cluster.wait(lambda: cluster.get("browsersession", name) is None
                 and cluster.get("pod", pod_name) is None, 120, "the session's pod gone")


def test_a_kubectl_browser_session_is_viewed_by_name(cluster: Cluster,
                                                     streamer_url: str) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    spec: dict[str, Any] = {"viewport": {"width": 640, "height": 480}, "idleTimeoutSeconds": 600}
    if cluster.url:
        spec["url"] = cluster.url
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession",
        "metadata": {"name": name}, "spec": spec}))
    try:
        bs = cluster.wait(lambda: (lambda b: b if b and b.get("status", {}).get("phase")
                                   in ("Ready", "Failed") else None)(
            cluster.get("browsersession", name)), cluster.timeout, f"{name} Ready")
        assert bs["status"]["phase"] == "Ready", bs["status"]
        table = cluster.kubectl("get", "bs", name).stdout
        assert "Ready" in table and f"{name}-browser" in table
        cluster.wait(lambda: is_jpeg(http("GET", f"{streamer_url}/api/session/{name}/frame")),
                     60, "a frame of the kubectl-made session")
        events = cluster.get("events", "--field-selector", f"involvedObject.name={name}")
        assert "BrowserReady" in {e["reason"] for e in events["items"]}
    finally:
        cluster.kubectl("delete", "bs", name, "--wait=true", "--timeout=120s", check=False,
                        timeout=150)
    assert cluster.get("browsersession", name) is None
    time.sleep(1)
    assert cluster.get("pod", f"{name}-browser") is None
