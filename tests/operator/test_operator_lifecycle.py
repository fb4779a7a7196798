"""The operator as a real process against a real API server, the tests playing the kubelet:
the whole life of BrowserSessions made with kubectl."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

from helpers import TRAP_HOST, PageServer
from kubelet import FakeKubelet
from op_harness import Kube, OperatorProcess, eventually, session_manifest

from jiomosa.browser.cdp import CDPConnection


def browser_pages(cdp_url: str) -> list[dict[str, Any]]:
    """The page targets of a browser, straight from its DevTools endpoint."""
    async def probe() -> list[dict[str, Any]]:
        conn = await CDPConnection.connect(cdp_url, timeout=10)
        try:
            targets = await conn.send("Target.getTargets")
        finally:
            await conn.close()
        return [t for t in targets["targetInfos"] if t["type"] == "page"]
    return asyncio.run(probe())


def seconds_between(earlier: str, later: str) -> float:
    def parse(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (parse(later) - parse(earlier)).total_seconds()


def status_of(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return dict((kube.session(ns, name) or {}).get("status") or {})


def test_kubectl_session_lifecycle(kube: Kube, kubelet: FakeKubelet, namespace: str,
                                   operator: OperatorProcess, pages: PageServer) -> None:
    ns = namespace
    kube.apply(session_manifest("web", ns, url=pages.url("/static"),
                                viewport={"width": 800, "height": 600}))

    # The pod: one per session, owned by it, hardened, with /dev/shm in memory.
    pod = eventually(lambda: kube.pod(ns, "web-browser"), what="the pod")
    bs = kube.session(ns, "web")
    assert bs is not None
    assert pod["metadata"]["ownerReferences"] == [{
        "apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession", "name": "web",
        "uid": bs["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    assert pod["metadata"]["labels"]["jiomosa.io/session"] == "web"
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["image"] == "selenium/standalone-chrome:latest"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in (
        spec["volumes"])
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False

    # Ready: the browser shows spec.url and status says how to reach it.
    bs = kube.wait_phase(ns, "web", "Ready", timeout=40)
    status = bs["status"]
    running = kubelet.pod(ns, "web-browser")
    assert status["podName"] == "web-browser" and status["podIP"] == "127.0.0.1"
    endpoints = status["endpoints"]
    assert endpoints["webdriver"] == f"http://127.0.0.1:{running.port}"
    assert endpoints["cdp"].startswith("ws://127.0.0.1:")
    assert endpoints["webdriverSessionId"] and endpoints["vnc"] == "http://127.0.0.1:7900/"
    assert status["url"] == pages.url("/static") and status["title"] == "static"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "PodReady": "True", "Ready": "True"}
    assert status["readyAt"] and status["startedAt"]
    assert [p["url"] for p in browser_pages(endpoints["cdp"])] == [pages.url("/static")]
    assert running.commands().count("InitSession") == 1

    # kubectl get bs shows the phase, the URL, the pod.
    table = kube.kubectl("get", "bs", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "URL", "POD", "AGE"]
    assert table[1].split()[:4] == ["web", "Ready", pages.url("/static"), "web-browser"]
    wide = kube.kubectl("get", "bs", "-n", ns, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "PHASE", "URL", "POD", "AGE", "REASON", "MESSAGE"]

    # The operator is live.
    with urllib.request.urlopen(operator.liveness_url, timeout=5) as response:
        assert response.status == 200

    # A new spec.url navigates the running browser.
    kube.patch_session(ns, "web", {"spec": {"url": pages.url("/app")}})
    eventually(lambda: status_of(kube, ns, "web").get("title") == "app", timeout=20,
               what="navigation to /app")
    assert [p["url"] for p in browser_pages(endpoints["cdp"])] == [pages.url("/app")]

    # A private address is refused, with a Warning; the page stays.
    trap = f"http://{TRAP_HOST}:9/secret"
    kube.patch_session(ns, "web", {"spec": {"url": trap}})
    eventually(lambda: "not allowed" in status_of(kube, ns, "web").get("message", ""),
               timeout=20, what="URL rejection")
    assert [p["url"] for p in browser_pages(endpoints["cdp"])] == [pages.url("/app")]
    assert status_of(kube, ns, "web")["phase"] == "Ready"

    events = kube.events(ns, "web")
    reasons = [reason for _, reason, _ in events]
    for expected in ("PodCreated", "Navigated", "BrowserReady", "URLRejected"):
        assert expected in reasons, events
    assert ("Warning", "URLRejected") in [(t, r) for t, r, _ in events]

    # Delete: the browser quits, the pod goes, then the resource.
    kube.kubectl("delete", "bs", "web", "-n", ns, "--wait=true", "--timeout=30s")
    assert kube.session(ns, "web") is None
    assert kube.pod(ns, "web-browser") is None
    assert running.commands()[-1] == "Quit"
    assert not kubelet.running(ns)


def test_idle_timeout_and_max_duration(kube: Kube, kubelet: FakeKubelet, namespace: str,
                                       operator: OperatorProcess, pages: PageServer) -> None:
    ns = namespace
    # "busy" reports activity (as the streamer does, through the annotation); "idle" does not.
    stop = threading.Event()

    def report() -> None:
        # Like the streamer: once the session is Ready, at a steady pace.
        eventually(lambda: status_of(kube, ns, "busy").get("phase") == "Ready", timeout=40)
        while not stop.is_set():
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with contextlib.suppress(AssertionError):
                kube.patch_session(ns, "busy", {"metadata": {"annotations": {
                    "jiomosa.io/last-activity": stamp}}})
            stop.wait(1.0)

    kube.apply(session_manifest("idle", ns, url=pages.url("/static"), idleTimeoutSeconds=2))
    kube.apply(session_manifest("busy", ns, url=pages.url("/static"), idleTimeoutSeconds=3,
                                maxDurationSeconds=12))
    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        idle = kube.wait_phase(ns, "idle", "Expired", timeout=40)["status"]
        assert idle["reason"] == "IdleTimeout" and idle["endedAt"]
        assert "endpoints" not in idle
        # Idle from the moment it was Ready (second-precision stamps).
        assert 1 <= seconds_between(idle["readyAt"], idle["endedAt"]) <= 6
        assert eventually(lambda: kube.pod(ns, "idle-browser") is None, timeout=10)
        busy = status_of(kube, ns, "busy")
        assert busy["phase"] == "Ready" and busy["lastActivity"]

        busy = kube.wait_phase(ns, "busy", "Expired", timeout=20)["status"]
        assert busy["reason"] == "MaxDurationReached"
        created = (kube.session(ns, "busy") or {})["metadata"]["creationTimestamp"]
        assert 11 <= seconds_between(created, busy["endedAt"]) <= 16
        # Activity kept it beyond its 3 s idle timeout.
        assert seconds_between(busy["readyAt"], busy["endedAt"]) >= 5
    finally:
        stop.set()
        reporter.join()
    assert eventually(lambda: kube.pod(ns, "busy-browser") is None, timeout=10)
    assert ("Normal", "IdleTimeout") in [(t, r) for t, r, _ in kube.events(ns, "idle")]
    assert ("Normal", "MaxDurationReached") in [(t, r) for t, r, _ in kube.events(ns, "busy")]


def test_sessions_that_cannot_start_fail_fast(kube: Kube, kubelet: FakeKubelet, namespace: str,
                                             operator: OperatorProcess) -> None:
    ns = namespace
    # A pod that has the session pod's name but is not the session's is never touched.
    kube.apply(json.dumps({"apiVersion": "v1", "kind": "Pod",
                          "metadata": {"name": "taken-browser", "namespace": ns},
                          "spec": {"containers": [{"name": "c", "image": "other:1"}]}}))
    kube.apply(session_manifest("taken", ns))
    taken = kube.wait_phase(ns, "taken", "Failed", timeout=20)["status"]
    assert taken["reason"] == "PodNameTaken"
    assert kube.pod(ns, "taken-browser") is not None

    started = time.monotonic()
    kube.apply(session_manifest("nope", ns, image="registry.invalid/jiomosa/no-such-image:1"))
    failed = kube.wait_phase(ns, "nope", "Failed", timeout=20)["status"]
    assert time.monotonic() - started < 10  # not a start timeout
    assert failed["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert "registry.invalid" in failed["message"]
    assert {c["type"]: c["status"] for c in failed["conditions"]}["Ready"] == "False"
    assert eventually(lambda: kube.pod(ns, "nope-browser") is None, timeout=10)
    assert ("Warning", failed["reason"]) in [(t, r) for t, r, _ in kube.events(ns, "nope")]
    # A failed session stays (like a finished Job) until deleted; delete is quick.
    kube.kubectl("delete", "bs", "nope", "-n", ns, "--wait=true", "--timeout=30s")


def test_pod_failure_after_ready(kube: Kube, kubelet: FakeKubelet, namespace: str,
                                 operator: OperatorProcess, pages: PageServer) -> None:
    ns = namespace
    kube.apply(session_manifest("oom", ns, url=pages.url("/static")))
    kube.wait_phase(ns, "oom", "Ready", timeout=40)
    kubelet.fail(ns, "oom-browser", reason="OOMKilled", exit_code=137)
    failed = kube.wait_phase(ns, "oom", "Failed", timeout=15)["status"]
    assert failed["reason"] == "OOMKilled"
    assert "exit code 137" in failed["message"]
    assert "endpoints" not in failed
    assert eventually(lambda: kube.pod(ns, "oom-browser") is None, timeout=10)
    assert ("Warning", "OOMKilled") in [(t, r) for t, r, _ in kube.events(ns, "oom")]


def test_operator_restart_is_idempotent(kube: Kube, kubelet: FakeKubelet, namespace: str,
                                        start_operator: Callable[..., OperatorProcess],
                                        pages: PageServer) -> None:
    ns = namespace
    kubelet.hold(ns)
    first = start_operator()
    kube.apply(session_manifest("again", ns, url=pages.url("/static")))
    pod = eventually(lambda: kube.pod(ns, "again-browser"), what="the pod")
    eventually(lambda: status_of(kube, ns, "again").get("phase") == "Pending")
    first.kill()  # dies mid-start: the pod exists, the browser does not

    second = start_operator()
    time.sleep(1.0)  # it has looked at the session by now
    kubelet.release(ns)
    ready = kube.wait_phase(ns, "again", "Ready", timeout=40)["status"]
    pods = [p for p in kube.pods(ns) if p["metadata"]["name"].startswith("again")]
    assert [p["metadata"]["uid"] for p in pods] == [pod["metadata"]["uid"]]

    # Dies while Ready: the new operator keeps the browser it finds.
    second.kill()
    start_operator()
    time.sleep(3.0)  # several health checks
    after = status_of(kube, ns, "again")
    assert after["phase"] == "Ready"
    assert after["endpoints"] == ready["endpoints"]
    assert [p["metadata"]["uid"] for p in kube.pods(ns)] == [pod["metadata"]["uid"]]
    assert kubelet.pod(ns, "again-browser").commands().count("InitSession") == 1
    kube.kubectl("delete", "bs", "again", "-n", ns, "--wait=true", "--timeout=30s")
    assert kube.pods(ns) == []
