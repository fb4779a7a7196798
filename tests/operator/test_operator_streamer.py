"""The streamer with ``JIOMOSA_BACKEND=kubernetes``: its browsers are BrowserSessions that the
operator runs (agent pods: the streamer attaches with the session's token, read from its
Secret), and BrowserSessions made with kubectl can be watched through it with their viewer
token, never by a name. What a streamer asks of the API server is counted in the audit log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import ADMIN, Api, PageServer, SioProbe, StreamerProcess, pixel
from kubelet import FakeKubelet
from op_harness import Kube, OperatorProcess, eventually, session_manifest
from test_operator_lifecycle import refused_status

from jiomosa.k8s import viewers

RED = "<!doctype html><title>red</title><body style='margin:0;background:rgb(255,0,0)'>"
BLUE = "<!doctype html><title>blue</title><body style='margin:0;background:rgb(0,0,255)'>"


@pytest.fixture
def colors(pages: PageServer) -> PageServer:
    pages.html("/op-red", RED)
    pages.html("/op-blue", BLUE)
    return pages


def kube_streamer(kubeconfig: Path, namespace: str, log_dir: Path) -> StreamerProcess:
    return StreamerProcess({
        "KUBECONFIG": str(kubeconfig),
        "JIOMOSA_BACKEND": "kubernetes",
        "JIOMOSA_NAMESPACE": namespace,
        "JIOMOSA_WARM_BROWSERS": "0",
        "JIOMOSA_BROWSER_START_TIMEOUT": "40",
    }, log_dir=log_dir)


@pytest.fixture
def streamer(kube: Kube, namespace: str, streamer_kubeconfig: Path, operator: OperatorProcess,
             tmp_path: Path) -> Iterator[StreamerProcess]:
    """``jiomosa serve`` on the kubernetes backend, as its least-privilege service account."""
    proc = kube_streamer(streamer_kubeconfig, namespace, tmp_path)
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log_tail()


@pytest.fixture
def other_streamer(namespace: str, streamer: StreamerProcess, tmp_path: Path,
                   identity_for: Callable[[str, str], Path]) -> Iterator[StreamerProcess]:
    """A second streamer on the same namespace (another replica, no shared registry), under a
    service account of its own (``jiomosa-streamer-b``) so that its API calls can be told
    apart in the audit log."""
    proc = kube_streamer(identity_for("jiomosa-streamer-b", "jiomosa-streamer"), namespace,
                         tmp_path)
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log_tail()


def user(namespace: str, account: str = "jiomosa-streamer") -> str:
    return f"system:serviceaccount:{namespace}:{account}"


async def refused_everywhere(api: Api, session_id: str) -> None:
    """``session_id`` reaches nothing: every REST path and a Socket.IO subscribe are 404s."""
    for method, path, body in [("GET", "info", None), ("GET", "frame", None),
                               ("POST", "load", {"url": "http://127.0.0.5/"}),
                               ("POST", "input/click", {"x": 1, "y": 1}),
                               ("POST", "keepalive", {}), ("POST", "close", {})]:
        status, data = await api.call(method, f"/api/session/{session_id}/{path}", body)
        assert status == 404, (session_id, path, status, data)
    async with SioProbe(api.base) as probe:
        await probe.emit("subscribe", {"session_id": session_id})
        error = await probe.wait_for("error", timeout=10)
        assert "not found" in error["message"].lower(), error
        assert not probe.frames()


def red(frame: dict[str, Any]) -> bool:
    r, g, b = pixel(frame["image"], 20, 20)
    return r > 200 and g < 60 and b < 60


def blue(frame: dict[str, Any]) -> bool:
    r, g, b = pixel(frame["image"], 20, 20)
    return b > 200 and r < 60 and g < 60


def activity(kube: Kube, ns: str, name: str) -> str:
    bs = kube.session(ns, name) or {}
    return str(((bs.get("metadata") or {}).get("annotations") or {}).get(
        "jiomosa.io/last-activity", ""))


async def test_streamer_sessions_are_browser_sessions(
        kube: Kube, kubelet: FakeKubelet, namespace: str, streamer: StreamerProcess,
        colors: PageServer) -> None:
    ns = namespace
    async with aiohttp.ClientSession() as http:
        api = Api(http, streamer.base)
        created = await api.create(url=colors.url("/op-red"), viewport={"width": 640,
                                                                         "height": 480})
        sid = created["session_id"]
        assert created["page_info"]["title"] == "red"

        # A BrowserSession of the streamer's, Ready, with its own pod.
        [bs] = kube.sessions(ns)
        name = bs["metadata"]["name"]
        assert name.startswith("jiomosa-")
        assert bs["metadata"]["labels"]["app.kubernetes.io/created-by"] == "jiomosa-streamer"
        assert bs["status"]["phase"] == "Ready"
        assert bs["spec"]["viewport"]["width"] == 640
        assert kube.pod(ns, bs["status"]["podName"]) is not None
        # An agent pod: the streamer attached with the session's token (from its Secret);
        # without it, or with a wrong one, the pod lets nobody in.
        endpoints = bs["status"]["endpoints"]
        token = kube.secret_value(ns, endpoints["cdpTokenSecret"], "token")
        for wrong in ("", token[:-1] + ("A" if token[-1] != "A" else "B")):
            assert await asyncio.to_thread(refused_status, endpoints["cdp"], wrong) == 401

        # Frames of the page, through the Kubernetes backend.
        async with SioProbe(streamer.base) as probe:
            frame = await probe.subscribe(sid)
            assert frame["width"] == 640 and frame["height"] == 480
            await probe.wait_for("frame", red)
            status, data = await api.call("POST", f"/api/session/{sid}/load",
                                          {"url": colors.url("/op-blue")})
            assert status == 200 and data["page_info"]["title"] == "blue"
            await probe.wait_for("frame", blue, timeout=10)
            # Watching is activity: the streamer tells the operator through the annotation.
            first = activity(kube, ns, name)
            assert first
            await asyncio.sleep(0.1)

        status, listing = await api.call("GET", "/api/sessions")
        assert status == 200 and [s["session_id"] for s in listing["sessions"]] == [sid]

        # Close deletes the BrowserSession; the operator quits the browser, the pod goes.
        await api.close(sid)
        await asyncio.to_thread(eventually, lambda: kube.sessions(ns) == [], 20)
        await asyncio.to_thread(eventually, lambda: kube.pods(ns) == [], 20)


async def test_kubectl_session_watched_through_the_streamer(
        kube: Kube, kubelet: FakeKubelet, namespace: str, streamer: StreamerProcess,
        colors: PageServer) -> None:
    ns = namespace
    kube.apply(session_manifest("lobby", ns, url=colors.url("/op-red"),
                                viewport={"width": 480, "height": 360}))
    await asyncio.to_thread(kube.wait_phase, ns, "lobby", "Ready", 40)
    assert activity(kube, ns, "lobby") == ""  # nobody has used it yet
    # The operator made a viewer token; its author reads it from the Secret.
    token = await asyncio.to_thread(kube.viewer_token, ns, "lobby")
    assert viewers.is_token(token)
    async with aiohttp.ClientSession() as http:
        api = Api(http, streamer.base)
        # The name is no way in.
        await refused_everywhere(api, "lobby")
        # The admin's list shows it by name (no session id), before anyone watches it.
        status, listing = await api.call("GET", "/api/sessions")
        assert status == 200
        assert [(s["session_id"], s["status"]) for s in listing["sessions"]] == [
            ("browsersession/lobby", "ready")]

        async with SioProbe(streamer.base) as probe:
            frame = await probe.subscribe(token)
            assert frame["width"] == 480 and frame["height"] == 360
            await probe.wait_for("frame", red)
            # Watching is activity, reported to the operator through the annotation.
            await asyncio.to_thread(eventually, lambda: activity(kube, ns, "lobby"), 10)
            # kubectl changes spec.url: the operator navigates, the viewers see it.
            kube.patch_session(ns, "lobby", {"spec": {"url": colors.url("/op-blue")}})
            await probe.wait_for("frame", blue, timeout=20)
            assert await api.title(token) == "blue"

        # The streamer closing its view leaves the kubectl-made resource alone.
        status, _ = await api.call("POST", f"/api/session/{token}/close")
        assert status == 200
        await asyncio.sleep(1.0)
        assert kube.phase(ns, "lobby") == "Ready"
        # ... and the token views it again.
        assert await api.title(token) == "blue"
        await api.close(token)
        # An unknown name, or a token of the right shape that is nobody's, is still a 404.
        for unknown in ("no-such-session", viewers.new_token()):
            status, _ = await api.call("GET", f"/api/session/{unknown}/info")
            assert status == 404

    kube.kubectl("delete", "bs", "lobby", "-n", ns, "--wait=true", "--timeout=30s")
    assert kube.pods(ns) == []


async def test_streamer_sessions_are_reachable_by_their_session_id_only(
        kube: Kube, kubelet: FakeKubelet, namespace: str, streamer: StreamerProcess,
        other_streamer: StreamerProcess, colors: PageServer) -> None:
    """Knowing a streamer-made BrowserSession's name (``kubectl get bs``; ~24 random bits)
    gives nothing: neither the streamer that made it nor another replica attaches to it or
    deletes it, and no guess costs an API call."""
    ns = namespace
    async with aiohttp.ClientSession() as http:
        api, other = Api(http, streamer.base), Api(http, other_streamer.base)
        sid = (await api.create(url=colors.url("/op-red")))["session_id"]
        [bs] = kube.sessions(ns)
        name = bs["metadata"]["name"]
        assert "viewer" not in bs["status"]  # no viewer token for a streamer's own session
        mark = kube.audit_mark()
        for target in (other, api):
            await refused_everywhere(target, name)
        # Guesses of every shape, token-shaped too: not one API call by the other replica.
        for guess in [name, "jiomosa-abcde", "lobby", viewers.new_token(), sid[:-1] + "A"]:
            status, _ = await other.call("GET", f"/api/session/{guess}/info")
            assert status == 404, guess
        assert kube.api_calls(mark, user(ns, "jiomosa-streamer-b")) == []
        # The session and its BrowserSession are untouched.
        assert kube.phase(ns, name) == "Ready"
        status, info = await api.call("GET", f"/api/session/{sid}/info")
        assert status == 200 and info["status"] == "ready", info
        await api.close(sid)
        await asyncio.to_thread(eventually, lambda: kube.sessions(ns) == [], 20)


async def test_anonymous_session_list_costs_no_api_call_and_tells_nothing(
        kube: Kube, kubelet: FakeKubelet, namespace: str, streamer: StreamerProcess,
        colors: PageServer) -> None:
    ns = namespace
    kube.apply(session_manifest("secret-page", ns, url=colors.url("/op-red")))
    await asyncio.to_thread(kube.wait_phase, ns, "secret-page", "Ready", 40)
    async with aiohttp.ClientSession() as http:
        api = Api(http, streamer.base)
        before = kube.audit_mark()
        sid = (await api.create(url=colors.url("/op-blue")))["session_id"]
        # The new session's first activity report (a PATCH) is made; then the streamer is
        # quiet (nobody uses the session).
        await asyncio.to_thread(eventually, lambda: any(
            c.startswith("patch") for c in kube.api_calls(before, user(ns))), 10)
        mark = kube.audit_mark()
        listings = []
        for _ in range(5):
            async with http.get(streamer.base + "/api/sessions") as r:
                assert r.status == 200
                listings.append(await r.json())
        assert kube.api_calls(mark, user(ns)) == []
        for listing in listings:
            assert listing["redacted"] is True and listing["active_sessions"] == 1
            assert listing["sessions"] == [{"session_id": "", "created_at": 0,
                                            "last_activity": 0, "current_page": "",
                                            "status": "ready"}]
        # The admin sees both, still at no API cost (the viewer index answers).
        async with http.get(streamer.base + "/api/sessions", headers=ADMIN) as r:
            listing = await r.json()
        assert sorted(s["session_id"] for s in listing["sessions"]) == sorted(
            [sid, "browsersession/secret-page"])
        assert kube.api_calls(mark, user(ns)) == []
        await api.close(sid)
    kube.kubectl("delete", "bs", "secret-page", "-n", ns, "--wait=true", "--timeout=30s")


async def test_a_streamer_session_from_the_warm_pool(
        kube: Kube, kubelet: FakeKubelet, namespace: str, streamer_kubeconfig: Path,
        start_operator: Callable[..., OperatorProcess], colors: PageServer,
        tmp_path: Path) -> None:
    """With a warm pool, a streamer's session claims a ready pod: create → first frame at
    the client without a pod start."""
    ns = namespace
    start_operator(JIOMOSA_OPERATOR_WARM_POOL="1", JIOMOSA_OPERATOR_POOL_INTERVAL="0.5")
    proc = kube_streamer(streamer_kubeconfig, ns, tmp_path)
    proc.start()
    try:
        warm = await asyncio.to_thread(eventually, lambda: [
            p for p in kube.pods(ns) if p["metadata"]["labels"].get("jiomosa.io/pool") == "warm"
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions") or [])], 60)
        async with aiohttp.ClientSession() as http, SioProbe(proc.base) as probe:
            api = Api(http, proc.base)
            started = time.monotonic()
            sid = (await api.create(url=colors.url("/op-red")))["session_id"]
            await probe.subscribe(sid)
            await probe.wait_for("frame", red)
            first_frame = time.monotonic() - started
            [bs] = kube.sessions(ns)
            assert bs["status"]["podName"] == warm[0]["metadata"]["name"]
            print(f"\ncreate -> first frame from a warm pool pod: {first_frame:.2f} s "
                  "(this machine, test kubelet)")
            await api.close(sid)
        await asyncio.to_thread(eventually, lambda: kube.sessions(ns) == [], 20)
        # Its pod went with it (never back to the pool).
        await asyncio.to_thread(eventually, lambda: kube.pod(
            ns, warm[0]["metadata"]["name"]) is None, 20)
    finally:
        assert proc.stop() == 0, proc.log_tail()
