"""The chart's RBAC, proven by running the real processes as the chart's ServiceAccounts.

The chart (defaults, or cluster-wide) is applied for real to the test API server (RBAC on,
`restricted` Pod Security enforced, so the operator's browser pods must comply too). Then
`jiomosa operator` runs with a token of the chart's operator ServiceAccount and the environment
of the chart's operator Deployment, and `jiomosa serve` with the streamer's ServiceAccount and
Deployment environment (Redis: a local redis-server); the tests play the kubelet
(tests/operator/kubelet.py). A lifecycle passes with no `forbidden` answer in any log; with any
single rule removed from the operator's Role (or ClusterRole), or the streamer's, it fails.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chart_support import (
    RELEASE,
    ChartCluster,
    container_env,
    docs,
    dump,
    is_hook,
    one,
    render,
    resolved_env,
)
from helpers import ADMIN, PAGE_HOST, PageServer, RedisServer, StreamerProcess
from kubelet import FakeKubelet
from op_harness import Kube, OperatorProcess, eventually, session_manifest

OPERATOR_SA = f"{RELEASE}-jiomosa-operator"
STREAMER_SA = f"{RELEASE}-jiomosa-streamer"
FORBIDDEN = re.compile(r"forbidden", re.IGNORECASE)


class Forbidden(AssertionError):
    """A process was refused by the API server."""


@pytest.fixture(scope="module")
def kubelet(chart_cluster: ChartCluster,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubelet]:
    playing = FakeKubelet(chart_cluster.cp, tmp_path_factory.mktemp("kubelet")).start()
    yield playing
    playing.stop()
    assert not playing.errors, playing.errors


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@dataclass
class Install:
    """The chart applied for real into a fresh namespace."""

    cluster: ChartCluster
    namespace: str
    manifests: list[dict[str, Any]]
    processes: list[OperatorProcess | StreamerProcess] = field(default_factory=list)

    @property
    def kube(self) -> Kube:
        return Kube(self.cluster.cp)

    def deployment(self, component: str) -> dict[str, Any]:
        return one(self.manifests, "Deployment", f"{RELEASE}-jiomosa-{component}")

    def can(self, account: str, verb: str, resource: str, namespace: str | None = None) -> bool:
        resource, _, subresource = resource.partition("/")
        args = ["auth", "can-i", verb, resource,
                f"--as=system:serviceaccount:{self.namespace}:{account}"]
        if subresource:
            args.append(f"--subresource={subresource}")
        args += ["--all-namespaces"] if namespace is None else ["-n", namespace]
        return self.cluster.kubectl(*args, check=False).stdout.strip() == "yes"

    def await_rbac(self, account: str, expect: list[tuple[str, str, bool]],
                   namespace: str | None = None) -> None:
        """RBAC changes reach the authorizer through an informer: wait until they did."""
        ns = self.namespace if namespace is None else namespace
        eventually(lambda: all(self.can(account, verb, res, ns or None) is want
                               for verb, res, want in expect),
                   timeout=20, interval=0.2, what=f"RBAC of {account}")

    def replace_rules(self, kind: str, name: str, rules: list[dict[str, Any]]) -> None:
        doc = one(self.manifests, kind, name)
        self.cluster.kubectl("apply", "-f", "-", input=dump([{**doc, "rules": rules}]))

    def start_operator(self, log_dir: Path, **env: str) -> OperatorProcess:
        kubeconfig = self.cluster.cp.kubeconfig_for_service_account(
            self.namespace, OPERATOR_SA, create=False)
        # The chart's environment, its token key read from the Secret the chart made.
        chart_env = resolved_env(self.deployment("operator"), self.manifests)
        chart_env.setdefault("JIOMOSA_OPERATOR_NAMESPACES", "")  # empty = cluster-wide
        # The test harness listens on a free loopback port; everything else is the chart's,
        # plus what only a test needs: the fake kubelet's per-pod ports, pages on PAGE_HOST.
        for var in ("JIOMOSA_OPERATOR_LIVENESS_PORT", "JIOMOSA_OPERATOR_LIVENESS_HOST"):
            chart_env.pop(var, None)
        chart_env.update({
            "JIOMOSA_OPERATOR_TRUST_PORT_ANNOTATION": "1",
            "JIOMOSA_OPERATOR_ALLOW_HOSTS": PAGE_HOST,
            "JIOMOSA_OPERATOR_POLL_INTERVAL": "0.3",
            "JIOMOSA_OPERATOR_CHECK_INTERVAL": "0.5",
            **env,
        })
        proc = OperatorProcess(kubeconfig, self.namespace, log_dir, chart_env)
        self.processes.append(proc)
        return proc.start()

    def start_streamer(self, log_dir: Path, redis: RedisServer) -> StreamerProcess:
        kubeconfig = self.cluster.cp.kubeconfig_for_service_account(
            self.namespace, STREAMER_SA, create=False)
        env = container_env(self.deployment("streamer"))
        env.update({
            "KUBECONFIG": str(kubeconfig),
            "JIOMOSA_REDIS_URL": redis.url,  # the chart's points at the in-cluster Service
            "JIOMOSA_STREAMER_ID": "chart-streamer-0",  # the pod name, in a cluster
            "JIOMOSA_ALLOW_HOSTS": PAGE_HOST,
            "JIOMOSA_WARM_BROWSERS": "0",
            "JIOMOSA_BROWSER_START_TIMEOUT": "40",
        })
        proc = StreamerProcess(env, log_dir=log_dir)
        self.processes.append(proc)
        return proc.start()

    def cleanup(self) -> None:
        for proc in self.processes:
            if isinstance(proc, OperatorProcess):
                proc.kill()
            else:
                proc.stop()
        kube = self.kube
        for bs in kube.sessions(self.namespace):
            name = bs["metadata"]["name"]
            kube.patch_session(self.namespace, name, {"metadata": {"finalizers": None}})
            self.cluster.kubectl("delete", "bs", name, "-n", self.namespace, "--wait=false",
                                 check=False)
        self.cluster.kubectl("delete", "pods", "--all", "-n", self.namespace, "--force",
                             "--grace-period=0", check=False)
        # Cluster-scoped objects (the admission policy: cluster-wide, it would bind in every
        # namespace of later tests) go too.
        cluster_scoped = [d for d in self.manifests if not d["metadata"].get("namespace")]
        if cluster_scoped:
            self.cluster.kubectl("delete", "-f", "-", "--wait=false", input=dump(cluster_scoped),
                                 check=False)


@pytest.fixture
def install(chart_cluster: ChartCluster, kubelet: FakeKubelet) -> Iterator[Any]:
    made: list[Install] = []

    def apply(*sets: str) -> Install:
        ns = chart_cluster.namespace("chart-rbac")
        manifests = [d for d in docs(render(ns, sets=sets)) if not is_hook(d)]
        chart_cluster.kubectl("apply", "-f", "-", input=dump(manifests))
        done = Install(chart_cluster, ns, manifests)
        made.append(done)
        return done

    yield apply
    for done in made:
        done.cleanup()


def session_pods(kube: Kube, ns: str) -> list[dict[str, Any]]:
    """The namespace's pods but the warm pool's (those stay when sessions go)."""
    return [p for p in kube.pods(ns)
            if (p["metadata"].get("labels") or {}).get("jiomosa.io/pool") != "warm"]


def refused(*logs: Path) -> str:
    """The first line of the logs that says the API server refused something."""
    for path in logs:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if FORBIDDEN.search(line):
                    return f"{path.name}: {line[:600]}"
    return ""


def until(probe: Any, timeout: float, what: str, *logs: Path) -> Any:
    """Poll like `eventually`, but fail at once when a log shows a refusal."""
    deadline = time.monotonic() + timeout
    while True:
        problem = refused(*logs)
        if problem:
            raise Forbidden(f"{what}: {problem}")
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.2)


def operator_lifecycle(inst: Install, operator: OperatorProcess, pages: PageServer,
                       name: str = "lobby", timeout: float = 40.0) -> None:
    """kubectl apply → pod → Ready (the page loaded) → Events → delete → all gone."""
    ns, kube, log = inst.namespace, inst.kube, operator.log_path
    kube.apply(session_manifest(name, ns, url=pages.url("/static")))
    bs = until(lambda: (lambda b: b if (b or {}).get("status", {}).get("phase") == "Ready"
                        else None)(kube.session(ns, name)), timeout, f"{name} Ready", log)
    assert bs["status"]["title"] == "static" and bs["status"]["endpoints"]["cdp"]
    pod = kube.pod(ns, bs["status"]["podName"])
    assert pod is not None and pod["metadata"]["ownerReferences"][0]["name"] == name
    until(lambda: ("Normal", "BrowserReady") in [(t, r) for t, r, _ in kube.events(ns, name)],
          10, "the BrowserReady Event", log)
    inst.cluster.kubectl("delete", "bs", name, "-n", ns, "--wait=false")
    until(lambda: kube.session(ns, name) is None and kube.pod(ns, pod["metadata"]["name"])
          is None, timeout, f"{name} and its pod gone", log)


def http(method: str, url: str, body: Any = None, timeout: float = 60.0) -> tuple[int, str, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **ADMIN})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def streamer_scenario(inst: Install, streamer: StreamerProcess, pages: PageServer,
                      *logs: Path) -> None:
    """What `helm test` does, plus the session list: create → BrowserSession → frame → close."""
    ns, kube = inst.namespace, inst.kube
    status, _, body = http("POST", streamer.base + "/api/session/create",
                           {"url": pages.url("/static")})
    problem = refused(streamer.log_path, *logs)
    assert status == 201 and not problem, (status, body[:300], problem)
    sid = json.loads(body)["session_id"]
    [bs] = kube.sessions(ns)
    assert bs["status"]["phase"] == "Ready"
    assert bs["metadata"]["labels"]["app.kubernetes.io/created-by"] == "jiomosa-streamer"
    frame = until(lambda: (lambda r: r if r[0] == 200 else None)(
        http("GET", f"{streamer.base}/api/session/{sid}/frame")), 20, "a frame",
        streamer.log_path, *logs)
    assert frame[1].startswith("image/jpeg") and frame[2][:2] == b"\xff\xd8"
    status, _, body = http("GET", streamer.base + "/api/sessions")
    assert status == 200 and sid in body.decode(), body[:300]
    status, _, body = http("POST", f"{streamer.base}/api/session/{sid}/close", {})
    assert status == 200, body[:300]
    until(lambda: not kube.sessions(ns) and not session_pods(kube, ns), 40,
          "the BrowserSession and its pod gone", streamer.log_path, *logs)


def view_by_token(inst: Install, streamer: StreamerProcess, pages: PageServer,
                  *logs: Path) -> int:
    """A kubectl-made session viewed through the streamer with its viewer token (what the
    streamer's watch rule is for): the status of a frame request; the session is deleted."""
    ns, kube = inst.namespace, inst.kube
    kube.apply(session_manifest("kiosk", ns, url=pages.url("/static")))
    until(lambda: (kube.session(ns, "kiosk") or {}).get("status", {}).get("phase") == "Ready",
          40, "kiosk Ready", *logs)
    token = kube.viewer_token(ns, "kiosk")
    deadline = time.monotonic() + 10  # the streamer's index hears of it through its watch
    while True:
        status, content_type, _ = http("GET", f"{streamer.base}/api/session/{token}/frame")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if status == 200:
        assert content_type.startswith("image/jpeg")
        status_close, _, _ = http("POST", f"{streamer.base}/api/session/{token}/close", {})
        assert status_close == 200 and kube.phase(ns, "kiosk") == "Ready"
    inst.cluster.kubectl("delete", "bs", "kiosk", "-n", ns, "--wait=false")
    until(lambda: kube.session(ns, "kiosk") is None, 40, "kiosk gone", *logs)
    return status


# ----------------------------------------------------------------------------- positive
def test_operator_and_streamer_run_as_the_charts_service_accounts(
        install: Any, pages: PageServer, redis: RedisServer, tmp_path: Path) -> None:
    inst: Install = install()
    ns = inst.namespace
    inst.await_rbac(OPERATOR_SA, [("create", "pods", True), ("patch",
                    "browsersessions.jiomosa.io/status", True), ("get", "secrets", False),
                    ("list", "secrets", False), ("delete", "secrets", True),
                    ("list", "pods", True), ("patch", "pods", True)])
    inst.await_rbac(STREAMER_SA, [("create", "browsersessions.jiomosa.io", True),
                                  ("create", "pods", False), ("get", "secrets", True),
                                  ("list", "secrets", False)])
    # Nothing beyond the release namespace.
    assert not inst.can(OPERATOR_SA, "list", "pods", "default")
    assert not inst.can(OPERATOR_SA, "list", "pods", None)

    # The chart's warm pool (in the sessions namespace): the sessions below claim its pods.
    operator = inst.start_operator(tmp_path, JIOMOSA_OPERATOR_POOL_INTERVAL="0.5")
    assert operator.env["JIOMOSA_OPERATOR_WARM_POOL"] == "2"
    until(lambda: len(warm_pods(inst.kube, ns)) == 2, 40, "the warm pool", operator.log_path)
    operator_lifecycle(inst, operator, pages)
    streamer = inst.start_streamer(tmp_path, redis)
    streamer_scenario(inst, streamer, pages, operator.log_path)
    assert view_by_token(inst, streamer, pages, operator.log_path) == 200
    claims = [r for bs in ("lobby", "kiosk") for _, r, _ in inst.kube.events(ns, bs)
              if r == "PodClaimed"]
    assert claims, "no session claimed a warm pod"
    assert streamer.stop() == 0, streamer.log_tail()
    assert operator.stop() == 0, operator.log_tail()
    assert not refused(operator.log_path, streamer.log_path)
    assert session_pods(inst.kube, ns) == []


def warm_pods(kube: Kube, ns: str) -> list[dict[str, Any]]:
    return [p for p in kube.pods(ns) if (p["metadata"].get("labels") or {}).get(
        "jiomosa.io/pool") == "warm" and not p["metadata"].get("deletionTimestamp")]


def test_cluster_wide_operator_runs_as_its_cluster_role(install: Any, pages: PageServer,
                                                        tmp_path: Path) -> None:
    inst: Install = install("operator.clusterWide=true", "browser.warmPool.size=0")
    inst.await_rbac(OPERATOR_SA, [("list", "pods", True), ("watch",
                    "browsersessions.jiomosa.io", True)], namespace="")
    operator = inst.start_operator(tmp_path)
    assert operator.env["JIOMOSA_OPERATOR_NAMESPACES"] == ""
    operator_lifecycle(inst, operator, pages, name="everywhere")
    assert operator.stop() == 0, operator.log_tail()
    assert not refused(operator.log_path)


# ----------------------------------------------------------------------------- negative
def without(rules: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    return [r for i, r in enumerate(rules) if i != index]


RULES = [("Role", 0, "browsersessions"), ("Role", 1, "browsersessions/status"),
         ("Role", 2, "pods"), ("Role", 3, "events"), ("Role", 4, "secrets"),
         ("ClusterRole", 5, "customresourcedefinitions")]


@pytest.mark.parametrize("kind,index,resource", RULES,
                         ids=[f"{k.lower()}-{r}" for k, _, r in RULES])
def test_the_operator_fails_without_any_one_rule(install: Any, pages: PageServer,
                                                 tmp_path: Path, kind: str, index: int,
                                                 resource: str) -> None:
    cluster_wide = kind == "ClusterRole"
    inst: Install = install("browser.warmPool.size=0",
                            *(["operator.clusterWide=true"] if cluster_wide else []))
    role = one(inst.manifests, kind, OPERATOR_SA if kind == "Role" else None)
    removed = role["rules"][index]
    assert removed["resources"] == [resource]
    inst.replace_rules(kind, role["metadata"]["name"], without(role["rules"], index))
    group = removed["apiGroups"][0]
    inst.await_rbac(OPERATOR_SA, [(removed["verbs"][0], f"{resource.split('/')[0]}"
                                   f"{'.' + group if group else ''}"
                                   f"{'/status' if '/' in resource else ''}", False)],
                    namespace="" if cluster_wide else None)
    with pytest.raises((AssertionError, RuntimeError)) as failure:
        operator = inst.start_operator(tmp_path)
        operator_lifecycle(inst, operator, pages, name="denied", timeout=30)
    logs = "\n".join(p.log_path.read_text(errors="replace") for p in inst.processes
                     if isinstance(p, OperatorProcess))
    assert FORBIDDEN.search(logs), f"failed without a refusal? {failure.value}"
    assert resource.split("/")[0] in logs.lower(), logs[-2000:]


@pytest.mark.parametrize("verb", ["create", "watch", "secrets"])
def test_the_streamer_fails_without_its_rule(install: Any, pages: PageServer,
                                             redis: RedisServer, tmp_path: Path,
                                             verb: str) -> None:
    """Without `create` no session starts; without `watch` no kubectl-made session can be
    viewed by its token (the streamer's index of tokens is fed by a watch); without `get` of
    Secrets the streamer cannot read a browser's CDP token, and no session starts."""
    inst: Install = install("browser.warmPool.size=0")
    role = one(inst.manifests, "Role", STREAMER_SA)
    [rule, secrets] = role["rules"]
    if verb == "secrets":
        assert secrets["resources"] == ["secrets"] and secrets["verbs"] == ["get"]
        inst.replace_rules("Role", STREAMER_SA, [rule])
        inst.await_rbac(STREAMER_SA, [("get", "secrets", False),
                                      ("create", "browsersessions.jiomosa.io", True)])
        operator = inst.start_operator(tmp_path)
    else:
        inst.replace_rules("Role", STREAMER_SA, [
            {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}, secrets])
        inst.await_rbac(STREAMER_SA, [(verb, "browsersessions.jiomosa.io", False),
                                      ("get", "browsersessions.jiomosa.io", True)])
    if verb == "watch":
        operator = inst.start_operator(tmp_path)
        streamer = inst.start_streamer(tmp_path, redis)
        assert view_by_token(inst, streamer, pages, operator.log_path) == 404
        assert refused(streamer.log_path), streamer.log_tail()
        return
    streamer = inst.start_streamer(tmp_path, redis)
    status, _, body = http("POST", streamer.base + "/api/session/create",
                           {"url": pages.url("/static")})
    assert status == 503, (status, body[:300])
    assert refused(streamer.log_path), streamer.log_tail()
    # No session left behind (without the token, the streamer deletes what it made).
    eventually(lambda: inst.kube.sessions(inst.namespace) == [], 30, what="no BrowserSession")
