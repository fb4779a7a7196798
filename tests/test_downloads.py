"""Downloads are denied browser-wide: a page that downloads a file (a ``download`` link clicked
by its script, answered with ``Content-Disposition: attachment``) leaves nothing on the
streamer's disk, neither in ``$HOME/Downloads`` of the user it runs as nor anywhere else."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from helpers import DOWNLOAD_NAME, ROOT, Api, PageServer, StreamerProcess

# Chromium first writes "<name>.crdownload" (or "Unconfirmed <n>.crdownload") and renames it.
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
GRACE = 5.0  # seconds after the browser fetched the file in which a download would be written


def downloaded_files(roots: list[Path]) -> list[Path]:
    """Files a download of the probe could have left under ``roots``."""
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            found += [Path(folder, f) for f in files
                      if DOWNLOAD_NAME in f or f.endswith(".crdownload")]
    return found


def fetched(pages: PageServer, path: str) -> bool:
    return any(p.split("?", 1)[0] == path for p in pages.requests)


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether ``condition`` became true within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_a_page_cannot_download_to_the_streamers_disk(
        tmp_path: Path, pages: PageServer, start_streamer: type[StreamerProcess]) -> None:
    # The streamer runs as a user whose home (and temporary directory, where chromedriver
    # makes the browser's profile) the test can search.
    # A short TMPDIR: Chromium's singleton socket path there must fit in 108 bytes.
    home, tmp = tmp_path / "home", Path(tempfile.mkdtemp(prefix="jdl-", dir="/tmp"))
    home.mkdir()
    streamer = start_streamer({"HOME": str(home), "TMPDIR": str(tmp),
                               "XDG_DOWNLOAD_DIR": str(home / "Downloads")})
    streamer.start()
    roots = [home, tmp, ROOT]
    assert not downloaded_files(roots)
    before = len(pages.requests)

    async def create() -> str:
        async with aiohttp.ClientSession() as http:
            data = await Api(http, streamer.base).create(url=pages.url("/download"))
            return str(data["session_id"])

    asyncio.run(create())
    try:
        # The browser asked for the file (so a download was attempted) ...
        assert wait_for(lambda: fetched(pages, "/attachment"), 15.0), pages.requests[before:]
        # ... and nothing was written anywhere we can see, within a generous grace period.
        assert not wait_for(lambda: bool(downloaded_files(roots)), GRACE), (
            f"a download reached the streamer's disk: {downloaded_files(roots)}")
    finally:
        streamer.stop()
        leftovers = downloaded_files(roots)
        shutil.rmtree(tmp, ignore_errors=True)
    assert not leftovers, leftovers
