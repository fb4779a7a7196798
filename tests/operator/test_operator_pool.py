"""The warm pool on a real API server, the tests playing the kubelet (agent pods run the real
``jiomosa browser``): pool pods wait without a session token, a BrowserSession claims one
atomically and hands it its token, the pool refills, shrinks and replaces pods that never
became ready, and sessions started at once never share a pod."""

from __future__ import annotations

import asyncio
import functools
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import PageServer
from kubelet import FakeKubelet
from op_harness import TOKEN_KEY, Kube, OperatorProcess, eventually, session_manifest
from test_operator_lifecycle import browser_pages, refused_status, secret, status_of

from jiomosa.k8s.api import KubeApi
from jiomosa_operator import tokens
from jiomosa_operator.builders import pool_pod
from jiomosa_operator.pool import WarmPool
from jiomosa_operator.settings import OperatorSettings


def pool_env(size: int, **more: str) -> dict[str, str]:
    return {"JIOMOSA_OPERATOR_WARM_POOL": str(size), "JIOMOSA_OPERATOR_POOL_INTERVAL": "0.5",
            **more}


def labels(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def warm(kube: Kube, ns: str, ready: bool | None = None) -> list[dict[str, Any]]:
    """The namespace's warm pool pods that are not being deleted (only the ready ones, or
    only the others, when asked)."""
    return [p for p in kube.pods(ns) if labels(p).get("jiomosa.io/pool") == "warm"
            and not p["metadata"].get("deletionTimestamp")
            and (ready is None or is_ready(p) == ready)]


def wait_pool(kube: Kube, ns: str, size: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait until the pool is exactly ``size`` ready pods."""
    def probe() -> list[dict[str, Any]] | None:
        pods = warm(kube, ns)
        return pods if len(pods) == size and all(map(is_ready, pods)) else None
    return eventually(probe, timeout, interval=0.2, what=f"a ready pool of {size}") if size else (
        eventually(lambda: warm(kube, ns) == [] or None, timeout, what="an empty pool") and [])


def post(url: str, body: Any, token: str) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def owner_of(bs: dict[str, Any]) -> dict[str, Any]:
    meta = bs["metadata"]
    return {"apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession",
            "name": meta["name"], "uid": meta["uid"], "controller": True,
            "blockOwnerDeletion": True}


def token_of(kube: Kube, ns: str, bs: dict[str, Any]) -> str:
    return kube.secret_value(ns, bs["status"]["endpoints"]["cdpTokenSecret"], "token")


# ----------------------------------------------------------------------------- claim, refill
def test_warm_pool_claim_refill_and_scale_down(
        kube: Kube, kubelet: FakeKubelet, namespace: str, pages: PageServer,
        start_operator: Callable[..., OperatorProcess]) -> None:
    ns = namespace
    operator = start_operator(**pool_env(2))
    pool = wait_pool(kube, ns, 2)
    first = {p["metadata"]["name"] for p in pool}
    for pod in pool:
        # Nobody's pod: no owner, no session token, a claim token of its own.
        assert "ownerReferences" not in pod["metadata"]
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert "JIOMOSA_BROWSER_TOKEN" not in env
        running = kubelet.pod(ns, pod["metadata"]["name"])
        claim = tokens.claim_token(TOKEN_KEY, ns, running.name)
        assert running.env["JIOMOSA_BROWSER_CLAIM_TOKEN"] == claim
        # Until claimed, its DevTools let nobody in, the claim token included.
        for token in ("", claim, tokens.session_token(TOKEN_KEY, "any")):
            assert refused_status(f"ws://127.0.0.1:{running.port}/devtools/browser",
                                  token) == 401

    # A session claims a ready pod instead of starting one.
    started = time.monotonic()
    kube.apply(session_manifest("quick", ns, url=pages.url("/static")))
    bs = kube.wait_phase(ns, "quick", "Ready", timeout=30)
    warm_ready = time.monotonic() - started
    name = bs["status"]["podName"]
    assert name in first
    claimed = kube.pod(ns, name)
    assert claimed is not None
    assert claimed["metadata"]["ownerReferences"] == [owner_of(bs)]
    assert labels(claimed)["jiomosa.io/pool"] == "claimed"
    assert labels(claimed)["jiomosa.io/session-uid"] == bs["metadata"]["uid"]
    assert ("Normal", "PodClaimed") in [(t, r) for t, r, _ in kube.events(ns, "quick")]
    # It serves the session's token (handed over by /claim), and only that one.
    token = token_of(kube, ns, bs)
    cdp = bs["status"]["endpoints"]["cdp"]
    assert [p["url"] for p in browser_pages(cdp, token)] == [pages.url("/static")]
    running = kubelet.pod(ns, name)
    claim = tokens.claim_token(TOKEN_KEY, ns, name)
    assert refused_status(cdp, claim) == 401
    # Claimed once: the pod refuses a second token, whoever asks.
    assert post(running.base + "/claim", {"token": "x" * 43}, claim) == 409
    assert [p["url"] for p in browser_pages(cdp, token)] == [pages.url("/static")]

    # The pool refills; the claimed pod is no part of it any more.
    refilled = wait_pool(kube, ns, 2)
    assert name not in {p["metadata"]["name"] for p in refilled}

    # A session a pool pod cannot serve (another scale) gets a pod of its own.
    started = time.monotonic()
    kube.apply(session_manifest("scaled", ns, url=pages.url("/static"), viewport={
        "width": 400, "height": 300, "deviceScaleFactor": 2}))
    scaled = kube.wait_phase(ns, "scaled", "Ready", timeout=40)
    cold_ready = time.monotonic() - started
    assert scaled["status"]["podName"] == "scaled-browser"
    print(f"\nBrowserSession Ready: {warm_ready:.2f} s from the warm pool, "
          f"{cold_ready:.2f} s with a pod of its own (this machine, test kubelet)")

    # Scale-down across an operator restart: the new operator keeps the claimed pod (found
    # through its labels, not claimed again) and deletes the warm pod beyond its size.
    operator.stop()
    operator = start_operator(**pool_env(1))
    wait_pool(kube, ns, 1)
    time.sleep(1.5)  # several health checks
    after = status_of(kube, ns, "quick")
    assert after["phase"] == "Ready" and after["podName"] == name
    assert after["endpoints"] == bs["status"]["endpoints"]
    assert [r for _, r, _ in kube.events(ns, "quick")].count("PodClaimed") == 1
    operator.stop()
    start_operator(**pool_env(0))
    wait_pool(kube, ns, 0)
    assert kube.pod(ns, name) is not None and kube.phase(ns, "quick") == "Ready"

    # Deleting the session deletes its pod (it never returns to the pool) and its token.
    kube.kubectl("delete", "bs", "quick", "scaled", "-n", ns, "--wait=true", "--timeout=30s")
    assert kube.pods(ns) == []
    assert secret(kube, ns, bs["status"]["endpoints"]["cdpTokenSecret"]) is None


def test_pool_pods_that_never_become_ready_are_replaced(
        kube: Kube, kubelet: FakeKubelet, namespace: str,
        start_operator: Callable[..., OperatorProcess]) -> None:
    ns = namespace
    kubelet.hold(ns)  # no pod of the namespace starts
    impatient = start_operator(**pool_env(2, JIOMOSA_OPERATOR_POOL_START_TIMEOUT="2"))
    stuck = {p["metadata"]["name"] for p in eventually(
        lambda: (lambda w: w if len(w) == 2 else None)(warm(kube, ns)), 20, what="2 pods")}
    # Past the start timeout they are replaced by new ones.
    eventually(lambda: len(warm(kube, ns)) == 2 and not stuck & {
        p["metadata"]["name"] for p in warm(kube, ns)}, 20, what="replaced pool pods")
    eventually(lambda: not stuck & {p["metadata"]["name"] for p in kube.pods(ns)}, 20,
               what="the stuck pods deleted")
    # With the default start timeout (a loaded machine may take more than 2 s to start a
    # browser), the pods that wait now start and stay.
    impatient.stop()
    start_operator(**pool_env(2))
    kubelet.release(ns)
    wait_pool(kube, ns, 2)


def test_a_pool_pod_that_refuses_its_claim_is_dropped(
        kube: Kube, kubelet: FakeKubelet, namespace: str, pages: PageServer,
        start_operator: Callable[..., OperatorProcess]) -> None:
    """Pool pods made under another key (the operator's key was replaced) do not take the
    new operator's claim: they are dropped, and the session still starts."""
    ns = namespace
    first = start_operator(**pool_env(2, JIOMOSA_OPERATOR_TOKEN_KEY="another-key-" + "x" * 32))
    old = {p["metadata"]["name"] for p in wait_pool(kube, ns, 2)}
    first.stop()
    start_operator(**pool_env(2))
    kube.apply(session_manifest("rekeyed", ns, url=pages.url("/static")))
    bs = kube.wait_phase(ns, "rekeyed", "Ready", timeout=60)
    assert bs["status"]["podName"] not in old
    assert "ClaimRefused" in [r for _, r, _ in kube.events(ns, "rekeyed")]
    token = token_of(kube, ns, bs)
    assert [p["url"] for p in browser_pages(bs["status"]["endpoints"]["cdp"], token)] == [
        pages.url("/static")]
    kube.kubectl("delete", "bs", "rekeyed", "-n", ns, "--wait=true", "--timeout=30s")


# ----------------------------------------------------------------------------- concurrency
def test_many_sessions_at_once_never_share_a_pod(
        kube: Kube, kubelet: FakeKubelet, namespace: str, pages: PageServer,
        start_operator: Callable[..., OperatorProcess]) -> None:
    """8 BrowserSessions applied at once against a pool of 3: every session gets exactly one
    pod, no pod serves two sessions, and each browser lets in its own session's token only."""
    ns = namespace
    start_operator(**pool_env(3))
    pool = {p["metadata"]["name"] for p in wait_pool(kube, ns, 3)}
    names = [f"s{i}" for i in range(8)]
    kube.kubectl("apply", "-f", "-", input="\n".join(
        session_manifest(n, ns, url=pages.url("/static")) for n in names))
    ready = [kube.wait_phase(ns, n, "Ready", timeout=180) for n in names]

    pods = {p["metadata"]["name"]: p for p in kube.pods(ns)}
    chosen = [bs["status"]["podName"] for bs in ready]
    assert len(set(chosen)) == 8, chosen
    for bs, name in zip(ready, chosen, strict=True):
        pod = pods[name]
        # Exactly one owner: this session; the pod's labels say the same.
        assert pod["metadata"]["ownerReferences"] == [owner_of(bs)], (bs, pod["metadata"])
        assert labels(pod)["jiomosa.io/session-uid"] == bs["metadata"]["uid"]
    owners = Counter(o["uid"] for p in pods.values()
                     for o in p["metadata"].get("ownerReferences") or [])
    assert set(owners.values()) == {1} and len(owners) == 8
    claimed = [n for n in chosen if labels(pods[n]).get("jiomosa.io/pool") == "claimed"]
    assert set(claimed) <= set(pods) and pool & set(chosen) <= set(claimed)
    assert claimed, "no session took a warm pod"
    events = {n: kube.events(ns, n) for n in names}
    claims = Counter(r for n in names for _, r, _ in events[n]
                     if r in ("PodClaimed", "ClaimRefused"))
    # Every claim is accounted for: the session kept the pod, or dropped it (and said so).
    assert claims["PodClaimed"] == len(claimed) + claims["ClaimRefused"], events
    # Each browser takes its own session's token and no other.
    tokens_ = [token_of(kube, ns, bs) for bs in ready]
    cdps = [bs["status"]["endpoints"]["cdp"] for bs in ready]
    for i in (0, 3, 7):
        assert browser_pages(cdps[i], tokens_[i])
        assert refused_status(cdps[i], tokens_[(i + 1) % 8]) == 401
    print(f"\n8 sessions at once, pool of 3: {len(claimed)} claimed warm pods, "
          f"{8 - len(claimed)} started their own")
    kube.kubectl("delete", "bs", *names, "-n", ns, "--wait=true", "--timeout=60s")


@pytest.fixture
def operator_api(namespace: str,
                 identity_for: Callable[[str, str], Path]) -> Callable[[], Any]:
    """KubeApi clients as the operator's ServiceAccount (its least privileges)."""
    kubeconfig = str(identity_for("jiomosa-operator", "jiomosa-operator"))
    return functools.partial(KubeApi.from_environment, kubeconfig)


async def test_a_warm_pod_is_claimed_once_whatever_the_race(
        kube: Kube, kubelet: FakeKubelet, namespace: str,
        operator_api: Callable[[], Any]) -> None:
    """The claim itself, raced by 12 sessions through 12 clients at once on one ready pod:
    the API server's resourceVersion precondition lets exactly one through."""
    ns = namespace
    kubelet.hold(ns)  # the test reports the pod ready itself; no browser is needed
    settings = OperatorSettings(token_key=TOKEN_KEY, namespaces=(ns,))
    kube.apply(json.dumps(pool_pod(ns, "jiomosa-pool-race", settings)))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    code, body = kube.cp.request(
        "PATCH", f"/api/v1/namespaces/{ns}/pods/jiomosa-pool-race/status",
        {"status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now}]}},
        content_type="application/merge-patch+json")
    assert code == 200, body
    apis = [await operator_api() for _ in range(12)]
    pools = [WarmPool(settings, functools.partial(lambda api: api, api)) for api in apis]
    sessions = [{"apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession",
                 "metadata": {"name": f"race{i}", "namespace": ns, "uid": f"uid-{i}"}}
                for i in range(12)]
    try:
        results = await asyncio.gather(*(p.claim(s) for p, s in zip(pools, sessions,
                                                                     strict=True)))
    finally:
        for api in apis:
            await api.close()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, [r and r["metadata"]["ownerReferences"] for r in results]
    pod = kube.pod(ns, "jiomosa-pool-race")
    assert pod is not None and len(pod["metadata"]["ownerReferences"]) == 1
    assert pod["metadata"]["ownerReferences"] == winners[0]["metadata"]["ownerReferences"]
    assert labels(pod)["jiomosa.io/pool"] == "claimed"
    kube.kubectl("delete", "pod", "jiomosa-pool-race", "-n", ns, "--wait=false")
