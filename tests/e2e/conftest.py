"""End-to-end tests against a real cluster where the chart is installed.

Two ways in:

* **The local node** (default): `tools/cluster/cluster.py up` brings up a single-node cluster
  on this machine (containerd, kubelet, CoreDNS, the chart, the nginx front), the tests run
  through the front, and the cluster is taken down at the end (when this session started
  it; one started by `make cluster` stays). On a machine that cannot run it (not root, no
  containerd...) every test here is skipped with the reason `cluster.py check` gives.
* **Any other cluster** (the hosted CI's kind job): `make e2e KUBECONFIG=...` sets
  JIOMOSA_E2E_KUBECONFIG; the tests reach the streamers through JIOMOSA_E2E_STREAMER_URL or a
  `kubectl port-forward`.

Settings: JIOMOSA_E2E_KUBECONFIG, JIOMOSA_E2E_NAMESPACE / JIOMOSA_E2E_RELEASE (default
jiomosa / jiomosa), JIOMOSA_E2E_TIMEOUT (seconds a browser may take to start, default 300),
JIOMOSA_E2E_STREAMER_URL, JIOMOSA_E2E_LOCAL=0 (never start the local node).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLUSTER_PY = ROOT / "tools" / "cluster" / "cluster.py"
sys.path.insert(0, str(HERE))

from e2e_support import Cluster, PageSite  # noqa: E402

KUBECONFIG = os.environ.get("JIOMOSA_E2E_KUBECONFIG", "")
LOCAL_FRONT = os.environ.get("JIOMOSA_CLUSTER_FRONT") or "127.0.0.1:8480"


def _local_unavailable() -> str:
    """Why the local node cannot run here ('' when it can)."""
    if os.environ.get("JIOMOSA_E2E_LOCAL") == "0":
        return "JIOMOSA_E2E_LOCAL=0 and no JIOMOSA_E2E_KUBECONFIG"
    proc = subprocess.run([sys.executable, str(CLUSTER_PY), "check"], capture_output=True,
                          text=True, timeout=60, check=False)
    return "" if proc.returncode == 0 else (
        "this machine cannot run the local cluster: " + proc.stderr.strip().splitlines()[-1])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [i for i in items if Path(str(i.fspath)).parent == HERE]
    if not ours or KUBECONFIG:
        return
    why = _local_unavailable()
    if why:
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=why))


def _cluster_py(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    # Its progress goes to our stderr (the test log shows the build, the pods, the release).
    return subprocess.run([sys.executable, str(CLUSTER_PY), *args], stdout=subprocess.PIPE,
                          stderr=None, text=True, timeout=timeout, check=False)


# Module scope (the suite is one module): a node this run started is taken down as soon as
# the suite ends, not after every other suite has run beside it.
@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    namespace = os.environ.get("JIOMOSA_E2E_NAMESPACE") or "jiomosa"
    release = os.environ.get("JIOMOSA_E2E_RELEASE") or "jiomosa"
    timeout = float(os.environ.get("JIOMOSA_E2E_TIMEOUT") or 300)
    if KUBECONFIG:
        yield Cluster(kubeconfig=KUBECONFIG, namespace=namespace, release=release,
                      timeout=timeout)
        return
    started = _cluster_py("status").returncode != 0
    if started:
        up = _cluster_py("up")
        assert up.returncode == 0, f"cluster.py up failed:\n{up.stdout}"
    else:
        up = _cluster_py("up")  # already running: installs the chart if it is not
        assert up.returncode == 0, f"cluster.py up failed:\n{up.stdout}"
    match = re.search(r"^KUBECONFIG=(.+)$", up.stdout, re.M)
    assert match, up.stdout
    cluster = Cluster(kubeconfig=match.group(1), namespace=namespace, release=release,
                      timeout=timeout, front=f"http://{LOCAL_FRONT}",
                      state=Path(os.environ.get("JIOMOSA_CLUSTER_DIR")
                                 or "/var/lib/jiomosa-cluster"))
    print("\n" + cluster.kubectl("get", "pods", "-A", "-o", "wide").stdout, file=sys.stderr)
    try:
        yield cluster
    finally:
        print("\n" + cluster.kubectl("get", "pods,browsersessions", "-A", "-o", "wide",
                                     check=False).stdout, file=sys.stderr)
        if started:
            down = _cluster_py("down", timeout=300)
            assert down.returncode == 0, "cluster.py down failed"


@pytest.fixture(scope="module")
def streamer_url(cluster: Cluster) -> Iterator[str]:
    """The front of the local node, JIOMOSA_E2E_STREAMER_URL, or a `kubectl port-forward` to
    the streamer Service."""
    given = os.environ.get("JIOMOSA_E2E_STREAMER_URL") or cluster.front
    if given:
        yield given.rstrip("/")
        return
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
    proc = subprocess.Popen(
        [kubectl, "--kubeconfig", cluster.kubeconfig, "-n", cluster.namespace, "port-forward",
         f"svc/{cluster.fullname}-streamer", ":80"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, f"port-forward said: {line}"
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def site(cluster: Cluster) -> Iterator[PageSite]:
    """The test pages, served by a pod in the release namespace (e2e-pages; the chart's
    urlPolicy.allowHosts must list its Service name)."""
    pages = PageSite(cluster)
    pages.deploy()
    try:
        yield pages
    finally:
        pages.remove()
