"""Chromium as a child process of the agent, DevTools on loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path

from jiomosa.browser.flags import CHROME_ARGS
from jiomosa.core.types import BrowserStartError

log = logging.getLogger(__name__)

PORT_FILE = "DevToolsActivePort"


class ChromeProcess:
    """One headless Chromium. ``ws_path`` is its browser target's DevTools path."""

    def __init__(self, binary: str, width: int, height: int, extra_args: tuple[str, ...],
                 data_root: str | None = None) -> None:
        self._binary = binary
        self._width = width
        self._height = height
        self._extra = extra_args
        self._data_root = data_root
        self._dir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.ws_path = ""

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.ws_path}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, timeout: float = 30.0) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="jiomosa-chrome-", dir=self._data_root))
        args = [
            *CHROME_ARGS,
            f"--window-size={self._width},{self._height}",
            f"--user-data-dir={self._dir}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",  # the port comes back in DevToolsActivePort
            *self._extra,
            "about:blank",
        ]
        self._proc = await asyncio.create_subprocess_exec(
            self._binary, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        port_file = self._dir / PORT_FILE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise BrowserStartError(f"chromium exited at start ({self._proc.returncode})")
            with contextlib.suppress(OSError, ValueError):
                lines = port_file.read_text().split("\n")
                if len(lines) >= 2 and lines[0].strip() and lines[1].startswith("/devtools/"):
                    self.port, self.ws_path = int(lines[0]), lines[1].strip()
                    log.info("chromium %s listening for DevTools on 127.0.0.1:%d",
                             self._proc.pid, self.port)
                    return
            await asyncio.sleep(0.02)
        await self.stop()
        raise BrowserStartError("chromium did not open DevTools in time")

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, grace: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
