"""End-to-end tests against a real cluster where the chart is installed (the hosted CI's kind
cluster, or any other). They run only when a kubeconfig is given:

    make e2e KUBECONFIG=~/.kube/config [E2E_NAMESPACE=jiomosa E2E_RELEASE=jiomosa]

which sets JIOMOSA_E2E_KUBECONFIG (a plain KUBECONFIG in the environment is not enough, so that
`make test` never touches a developer's cluster). Settings:

* JIOMOSA_E2E_KUBECONFIG: the kubeconfig (required);
* JIOMOSA_E2E_NAMESPACE / JIOMOSA_E2E_RELEASE: where and under which name the chart is
  installed (default: jiomosa / jiomosa);
* JIOMOSA_E2E_URL: the page sessions open (default: about:blank, which needs no internet);
* JIOMOSA_E2E_TIMEOUT: seconds a browser may take to start (default 300: image pulls);
* JIOMOSA_E2E_STREAMER_URL: reach the streamers there (e.g. through the ingress) instead of
  through a `kubectl port-forward` to their Service.
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
sys.path.insert(0, str(HERE))

from e2e_support import Cluster  # noqa: E402

KUBECONFIG = os.environ.get("JIOMOSA_E2E_KUBECONFIG", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if KUBECONFIG:
        return
    skip = pytest.mark.skip(reason="no cluster: make e2e KUBECONFIG=... (JIOMOSA_E2E_KUBECONFIG)")
    for item in items:
        if Path(str(item.fspath)).parent == HERE:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    return Cluster(
        kubeconfig=KUBECONFIG,
        namespace=os.environ.get("JIOMOSA_E2E_NAMESPACE") or "jiomosa",
        release=os.environ.get("JIOMOSA_E2E_RELEASE") or "jiomosa",
        url=os.environ.get("JIOMOSA_E2E_URL") or "",
        timeout=float(os.environ.get("JIOMOSA_E2E_TIMEOUT") or 300),
    )


@pytest.fixture(scope="session")
def streamer_url(cluster: Cluster) -> Iterator[str]:
    """A `kubectl port-forward` to the streamer Service (or JIOMOSA_E2E_STREAMER_URL)."""
    given = os.environ.get("JIOMOSA_E2E_STREAMER_URL")
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
