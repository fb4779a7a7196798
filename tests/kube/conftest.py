"""A real kube-apiserver + etcd for the tests below this directory.

The binaries are built (once, cached outside the repo) by
tools/controlplane/build.sh -- `make controlplane` does the same ahead of time.
The build runs right after collection, when a selected test uses
`control_plane`, so that a cold build (~5 min) does not count against any
test's timeout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane import ControlPlane, ControlPlaneError, built_once


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any("control_plane" in getattr(item, "fixturenames", ()) for item in session.items):
        try:
            built_once()
        except ControlPlaneError:
            pass  # reported by the fixture, as an error of the tests that need it


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver (RBAC on, no kubelet/controllers), admin kubeconfig
    at `.kubeconfig`; see tests/kube/controlplane.py."""
    with ControlPlane(built_once()) as cp:
        yield cp
