"""Shared fixtures: test pages on loopback and a real streamer process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers import TRAP_HOST, Api, PageServer, StreamerProcess, build_pages


@pytest.fixture(scope="session")
def trap() -> Iterator[PageServer]:
    """A server on a blocked address: any request it records is an SSRF hole."""
    server = PageServer(TRAP_HOST)
    yield server
    server.shutdown()


@pytest.fixture(scope="session")
def pages(trap: PageServer) -> Iterator[PageServer]:
    server = build_pages(trap)
    yield server
    server.shutdown()


@pytest.fixture(scope="session")
def streamer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamerProcess]:
    """The streamer most tests share (embedded default settings, test pages allowed)."""
    proc = StreamerProcess({"JIOMOSA_MAX_SESSIONS": "6"},
                           log_dir=tmp_path_factory.mktemp("streamer"))
    proc.start()
    yield proc
    code = proc.stop()
    assert code == 0, f"streamer did not shut down cleanly ({code}):\n{proc.log_tail()}"


@pytest.fixture
def start_streamer(tmp_path: Path) -> Iterator[type[StreamerProcess]]:
    """Start extra streamers with their own settings; all are stopped after the test."""
    started: list[StreamerProcess] = []

    class Started(StreamerProcess):
        def __init__(self, env: dict[str, str] | None = None) -> None:
            super().__init__(env, log_dir=tmp_path)
            started.append(self)

    yield Started
    for proc in started:
        proc.stop()


@pytest.fixture
async def api(streamer: StreamerProcess) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        yield Api(http, streamer.base)
