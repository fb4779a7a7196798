"""The streamer with ``JIOMOSA_BACKEND=kubernetes``: its browsers are BrowserSessions that the
operator runs, and BrowserSessions made with kubectl can be watched through it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import Api, PageServer, SioProbe, StreamerProcess, pixel
from kubelet import FakeKubelet
from op_harness import Kube, OperatorProcess, eventually, session_manifest

RED = "<!doctype html><title>red</title><body style='margin:0;background:rgb(255,0,0)'>"
BLUE = "<!doctype html><title>blue</title><body style='margin:0;background:rgb(0,0,255)'>"


@pytest.fixture
def colors(pages: PageServer) -> PageServer:
    pages.html("/op-red", RED)
    pages.html("/op-blue", BLUE)
    return pages


@pytest.fixture
def streamer(kube: Kube, namespace: str, streamer_kubeconfig: Path, operator: OperatorProcess,
             tmp_path: Path) -> Iterator[StreamerProcess]:
    """``jiomosa serve`` on the kubernetes backend, as its least-privilege service account."""
    proc = StreamerProcess({
        "KUBECONFIG": str(streamer_kubeconfig),
        "JIOMOSA_BACKEND": "kubernetes",
        "JIOMOSA_NAMESPACE": namespace,
        "JIOMOSA_WARM_BROWSERS": "0",
        "JIOMOSA_BROWSER_START_TIMEOUT": "40",
    }, log_dir=tmp_path)
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log_tail()


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
    async with aiohttp.ClientSession() as http:
        api = Api(http, streamer.base)
        # Listed before anyone watches it.
        status, listing = await api.call("GET", "/api/sessions")
        assert status == 200
        assert [(s["session_id"], s["status"]) for s in listing["sessions"]] == [
            ("lobby", "ready")]

        async with SioProbe(streamer.base) as probe:
            frame = await probe.subscribe("lobby")
            assert frame["width"] == 480 and frame["height"] == 360
            await probe.wait_for("frame", red)
            # Watching is activity, reported to the operator through the annotation.
            await asyncio.to_thread(eventually, lambda: activity(kube, ns, "lobby"), 10)
            # kubectl changes spec.url: the operator navigates, the viewers see it.
            kube.patch_session(ns, "lobby", {"spec": {"url": colors.url("/op-blue")}})
            await probe.wait_for("frame", blue, timeout=20)
            assert await api.title("lobby") == "blue"

        # The streamer closing its view leaves the kubectl-made resource alone.
        await api.close("lobby")
        await asyncio.sleep(1.0)
        assert kube.phase(ns, "lobby") == "Ready"
        # An unknown name is still a 404.
        status, _ = await api.call("GET", "/api/session/no-such-session/info")
        assert status == 404

    kube.kubectl("delete", "bs", "lobby", "-n", ns, "--wait=true", "--timeout=30s")
    assert kube.pods(ns) == []
