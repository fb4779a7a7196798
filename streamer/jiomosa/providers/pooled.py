"""Browsers started with Selenium, locally or on a Grid, with a warm pool so that a new session
does not wait for Chromium to boot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from jiomosa.browser import driver
from jiomosa.browser.cdp import CDPConnection
from jiomosa.core import executors
from jiomosa.core.settings import Settings
from jiomosa.core.types import BrowserEndpoint, BrowserStartError, Viewport
from jiomosa.providers.base import BrowserLease

log = logging.getLogger(__name__)


class PooledProvider:
    """Starts browsers with Selenium (local chromedriver or a Grid) and keeps
    ``settings.warm_browsers`` of them ready, within the session capacity (``in_use`` counts the
    sessions that hold a browser)."""

    def __init__(self, settings: Settings, in_use: Callable[[], int]) -> None:
        self._settings = settings
        self._in_use = in_use
        self._ready: list[BrowserLease] = []
        self._starting = 0
        self._refill_needed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.extra_args: tuple[str, ...] = ()
        """Chromium flags the manager adds (the egress proxy's) for local browsers."""

    async def start(self) -> None:
        if self._settings.warm_browsers:
            self._task = asyncio.create_task(self._refill_loop(), name="browser-pool")
            self._refill_needed.set()

    def lease_for(self, endpoint: BrowserEndpoint) -> BrowserLease:
        return BrowserLease(endpoint)

    async def find(self, name: str) -> tuple[BrowserLease, Viewport] | None:
        return None

    async def listed(self) -> list[dict[str, Any]]:
        return []

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        ready, self._ready = self._ready, []
        await asyncio.gather(*(lease.release() for lease in ready), return_exceptions=True)

    async def acquire(self, width: int, height: int, scale: float = 1.0) -> BrowserLease:
        if scale != 1.0:
            # Headless Chrome's screencast has device pixels only when the whole browser runs
            # at that scale, so such a session gets a browser of its own, not a warm one.
            return await self._start_one(width, height, scale)
        while self._ready:
            lease = self._ready.pop(0)
            self._refill_needed.set()
            if await _responds(lease.endpoint):
                return lease
            await lease.release()  # died while waiting in the pool
        lease = await self._start_one(width, height)
        self._refill_needed.set()
        return lease

    @property
    def warm(self) -> int:
        return len(self._ready)

    async def _start_one(self, width: int, height: int, scale: float = 1.0) -> BrowserLease:
        s = self._settings
        extra = (*s.extra_chrome_args, *self.extra_args) if s.backend == "local" else (
            s.extra_chrome_args)
        if scale != 1.0:
            extra = (*extra, f"--force-device-scale-factor={scale:g}")
        self._starting += 1
        try:
            if s.backend == "grid":
                endpoint = await asyncio.wait_for(
                    executors.run("browser", driver.start_remote, s.grid_url, width, height,
                                  extra),
                    s.browser_start_timeout,
                )
                return BrowserLease(endpoint)
            local = await asyncio.wait_for(
                executors.run("browser", driver.start_local, s.chromium_path,
                              s.chromedriver_path, width, height, extra),
                s.browser_start_timeout,
            )
            return BrowserLease(local.endpoint, local)
        except TimeoutError:
            raise BrowserStartError("the browser did not start in time") from None
        finally:
            self._starting -= 1

    async def _refill_loop(self) -> None:
        s = self._settings
        failures = 0
        while not self._stopping:
            await self._refill_needed.wait()
            self._refill_needed.clear()
            while (len(self._ready) + self._starting < s.warm_browsers
                   and self._in_use() + len(self._ready) < s.max_sessions + s.warm_browsers):
                try:
                    lease = await self._start_one(s.default_width, s.default_height)
                except BrowserStartError as exc:
                    failures += 1
                    log.warning("warm browser failed to start (%s); retrying", exc)
                    await asyncio.sleep(min(30.0, 0.5 * 2 ** failures))
                    continue
                failures = 0
                if self._stopping:
                    await lease.release()
                    return
                self._ready.append(lease)

    def request_refill(self) -> None:
        self._refill_needed.set()


async def _responds(endpoint: BrowserEndpoint) -> bool:
    try:
        conn = await CDPConnection.connect(endpoint.cdp_url, timeout=3.0)
    except Exception:
        return False
    await conn.close()
    return True
