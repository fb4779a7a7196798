"""The operator as a real process against a real API server, the tests playing the kubelet:
the whole life of BrowserSessions made with kubectl, in agent pods (the default) and in
Selenium pods (the alternative)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp
from helpers import TRAP_HOST, PageServer
from kubelet import FakeKubelet
from op_harness import TOKEN_KEY, Kube, OperatorProcess, eventually, session_manifest

from jiomosa import __version__
from jiomosa.browser.cdp import CDPConnection
from jiomosa_operator import tokens

SELENIUM = {"JIOMOSA_OPERATOR_BROWSER_KIND": "selenium"}


def browser_pages(cdp_url: str, token: str = "") -> list[dict[str, Any]]:
    """The page targets of a browser, straight from its DevTools endpoint."""
    async def probe() -> list[dict[str, Any]]:
        conn = await CDPConnection.connect(cdp_url, timeout=10, token=token)
        try:
            targets = await conn.send("Target.getTargets")
        finally:
            await conn.close()
        return [t for t in targets["targetInfos"] if t["type"] == "page"]
    return asyncio.run(probe())


def refused_status(cdp_url: str, token: str) -> int:
    """The HTTP status a DevTools connection with ``token`` gets (101 = it was let in)."""
    async def probe() -> int:
        try:
            conn = await CDPConnection.connect(cdp_url, timeout=10, token=token)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await conn.close()
        return 101
    return asyncio.run(probe())


def secret(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    status, body = kube.cp.request("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
    return body if status == 200 else None


def seconds_between(earlier: str, later: str) -> float:
    def parse(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (parse(later) - parse(earlier)).total_seconds()


def status_of(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return dict((kube.session(ns, name) or {}).get("status") or {})


def test_agent_session_lifecycle_and_its_token(kube: Kube, kubelet: FakeKubelet, namespace: str,
                                               operator: OperatorProcess,
                                               pages: PageServer) -> None:
    """An agent pod: its token in a Secret the session owns (made before the pod, handed to
    the pod through its environment), demanded on DevTools, derived again by the operator to
    navigate, deleted with the session."""
    ns = namespace
    kube.apply(session_manifest("web", ns, url=pages.url("/static"),
                                viewport={"width": 800, "height": 600}))
    pod = eventually(lambda: kube.pod(ns, "web-browser"), what="the pod")
    bs = kube.session(ns, "web")
    assert bs is not None
    uid = bs["metadata"]["uid"]
    owner = {"apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession", "name": "web",
             "uid": uid, "controller": True, "blockOwnerDeletion": True}

    # The token's Secret, named in status before the pod existed, owned by the session.
    name = bs["status"]["endpoints"]["cdpTokenSecret"]
    stored = secret(kube, ns, name)
    assert stored is not None and name.startswith("web-cdp-")
    assert stored["metadata"]["ownerReferences"] == [owner]
    assert stored["immutable"] is True and list(stored["data"]) == ["token"]
    token = kube.secret_value(ns, name, "token")
    assert token == tokens.session_token(TOKEN_KEY, uid) and len(token) >= 43

    # The pod: the agent on one port, read-only root, its token from the Secret.
    assert pod["metadata"]["ownerReferences"] == [owner]
    spec = pod["spec"]
    [container] = spec["containers"]
    assert container["image"] == f"jiomosa.local/jiomosa-browser:{__version__}"
    assert container["args"] == ["browser", "--port", "9300"]
    assert container["ports"] == [{"name": "cdp", "containerPort": 9300, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "cdp",
                                                      "scheme": "HTTP"}
    assert {"name": "JIOMOSA_BROWSER_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": name, "key": "token"}}} in container["env"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsUser"] == 10001
    assert {v["name"]: v["emptyDir"] for v in spec["volumes"]} == {
        "dshm": {"medium": "Memory", "sizeLimit": "1Gi"}, "tmp": {"sizeLimit": "1Gi"}}
    assert spec["automountServiceAccountToken"] is False
    assert "4444" not in json.dumps(spec) and "7900" not in json.dumps(spec)

    # Ready: the agent's process got the token from the Secret; status says where to attach.
    ready = kube.wait_phase(ns, "web", "Ready", timeout=40)["status"]
    running = kubelet.pod(ns, "web-browser")
    assert running.env["JIOMOSA_BROWSER_TOKEN"] == token
    cdp = f"ws://127.0.0.1:{running.port}/devtools/browser"
    assert ready["endpoints"] == {"cdp": cdp, "cdpTokenSecret": name}
    assert ready["url"] == pages.url("/static") and ready["title"] == "static"
    assert [p["url"] for p in browser_pages(cdp, token)] == [pages.url("/static")]
    # Without the token, with a wrong one or another session's, the pod lets nobody in.
    for wrong in ("", token[:-1] + ("A" if token[-1] != "A" else "B"),
                  tokens.session_token(TOKEN_KEY, "another-uid"),
                  tokens.claim_token(TOKEN_KEY, ns, "web-browser")):
        assert refused_status(cdp, wrong) == 401, wrong

    # spec.url changes: the operator derives the token (it reads no Secret) and navigates.
    kube.patch_session(ns, "web", {"spec": {"url": pages.url("/app")}})
    eventually(lambda: status_of(kube, ns, "web").get("title") == "app", timeout=20,
               what="navigation to /app")
    assert [p["url"] for p in browser_pages(cdp, token)] == [pages.url("/app")]
    kube.patch_session(ns, "web", {"spec": {"url": "about:blank"}})
    eventually(lambda: status_of(kube, ns, "web").get("url") == "about:blank", timeout=20,
               what="navigation to about:blank")
    assert [p["url"] for p in browser_pages(cdp, token)] == ["about:blank"]
    trap = f"http://{TRAP_HOST}:9/secret"
    kube.patch_session(ns, "web", {"spec": {"url": trap}})
    eventually(lambda: "not allowed" in status_of(kube, ns, "web").get("message", ""),
               timeout=20, what="URL rejection")
    reasons = [r for _, r, _ in kube.events(ns, "web")]
    for expected in ("CDPToken", "PodCreated", "BrowserReady", "Navigated", "URLRejected"):
        assert expected in reasons, reasons

    # Delete: the pod and the token's Secret go (no garbage collector runs here: the
    # operator's finalizer deletes the Secret itself).
    kube.kubectl("delete", "bs", "web", "-n", ns, "--wait=true", "--timeout=30s")
    assert kube.session(ns, "web") is None and kube.pod(ns, "web-browser") is None
    assert secret(kube, ns, name) is None
    assert not kubelet.running(ns)


def test_selenium_session_lifecycle(kube: Kube, kubelet: FakeKubelet, namespace: str,
                                    start_operator: Callable[..., OperatorProcess],
                                    pages: PageServer) -> None:
    """The Selenium alternative (JIOMOSA_OPERATOR_BROWSER_KIND=selenium): WebDriver, se:cdp."""
    ns = namespace
    operator = start_operator(**SELENIUM)
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
    """A Selenium pod holds a WebDriver session the operator opens: a restart must neither open
    a second one nor make a second pod. (Agent pods: tests/operator/test_operator_pool.py.)"""
    ns = namespace
    kubelet.hold(ns)
    first = start_operator(**SELENIUM)
    kube.apply(session_manifest("again", ns, url=pages.url("/static")))
    pod = eventually(lambda: kube.pod(ns, "again-browser"), what="the pod")
    eventually(lambda: status_of(kube, ns, "again").get("phase") == "Pending")
    first.kill()  # dies mid-start: the pod exists, the browser does not

    second = start_operator(**SELENIUM)
    time.sleep(1.0)  # it has looked at the session by now
    kubelet.release(ns)
    ready = kube.wait_phase(ns, "again", "Ready", timeout=40)["status"]
    pods = [p for p in kube.pods(ns) if p["metadata"]["name"].startswith("again")]
    assert [p["metadata"]["uid"] for p in pods] == [pod["metadata"]["uid"]]

    # Dies while Ready: the new operator keeps the browser it finds.
    second.kill()
    start_operator(**SELENIUM)
    time.sleep(3.0)  # several health checks
    after = status_of(kube, ns, "again")
    assert after["phase"] == "Ready"
    assert after["endpoints"] == ready["endpoints"]
    assert [p["metadata"]["uid"] for p in kube.pods(ns)] == [pod["metadata"]["uid"]]
    assert kubelet.pod(ns, "again-browser").commands().count("InitSession") == 1
    kube.kubectl("delete", "bs", "again", "-n", ns, "--wait=true", "--timeout=30s")
    assert kube.pods(ns) == []


def test_specs_beyond_the_operators_settings_fail(kube: Kube, kubelet: FakeKubelet,
                                                  namespace: str, operator: OperatorProcess,
                                                  pages: PageServer) -> None:
    """Whoever may create a BrowserSession chooses neither the code that runs nor the node it
    lands on, and cannot drop the memory limit (the API server's schema lets all of these
    through; the chart's admission policy refuses them earlier, tests/chart)."""
    ns = namespace
    refused = {
        "foreign": ({"image": "evil.example/chrome:1"}, "image evil.example/chrome:1"),
        "anynode": ({"tolerations": [{"operator": "Exists"}]}, "without a key"),
        "pinned": ({"nodeSelector": {"kubernetes.io/hostname": "control-plane"}},
                   "nodeSelector kubernetes.io/hostname=control-plane"),
        "huge": ({"resources": {"limits": {"memory": "64Gi"}}}, "limits.memory 64Gi"),
    }
    for name, (spec, _) in refused.items():
        kube.apply(session_manifest(name, ns, **spec))
    # requests: {} used to replace the defaults, the 2 Gi memory limit with them.
    kube.apply(session_manifest("bare", ns, url=pages.url("/static"),
                                resources={"requests": {}}))
    for name, (_, fragment) in refused.items():
        failed = kube.wait_phase(ns, name, "Failed", timeout=20)["status"]
        assert failed["reason"] == "SpecNotAllowed" and fragment in failed["message"], failed
        assert ("Warning", "SpecNotAllowed") in [(t, r) for t, r, _ in kube.events(ns, name)]
        assert kube.pod(ns, f"{name}-browser") is None and "viewer" not in failed

    ready = kube.wait_phase(ns, "bare", "Ready", timeout=40)
    pod = kube.pod(ns, "bare-browser")
    assert pod is not None
    assert pod["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    # A kubectl-made session has a viewer token, in a Secret it owns; status has its hash.
    viewer = ready["status"]["viewer"]
    status, secret = kube.cp.request("GET", f"/api/v1/namespaces/{ns}/secrets/"
                                     f"{viewer['secretName']}")
    assert status == 200, secret
    assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [
        ready["metadata"]["uid"]]
    token = kube.secret_value(ns, viewer["secretName"], "token")
    assert viewer["tokenHash"] == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert ("Normal", "ViewerToken") in [(t, r) for t, r, _ in kube.events(ns, "bare")]
    kube.kubectl("delete", "bs", "bare", "-n", ns, "--wait=true", "--timeout=30s")
