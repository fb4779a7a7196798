"""In-process stand-ins for unit tests of pure logic (no browser, no Redis, no subprocess).

Never the proof that a feature works end to end: the suites with a real Chromium, real Redis
and real clients are. These make the session manager, the fleet coordinator, the event table
and the pacer testable in milliseconds.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from PIL import Image

from jiomosa.core.errors import ClientError
from jiomosa.core.settings import Settings
from jiomosa.core.types import BrowserEndpoint, Viewport
from jiomosa.core.urlpolicy import UrlPolicy
from jiomosa.fleet.relay import MessageListener, RelayError, RequestHandler
from jiomosa.frames.hub import Frame
from jiomosa.frames.pacer import Subscriber
from jiomosa.providers.base import BrowserLease
from jiomosa.sessions.session import Page


def jpeg(width: int = 64, height: int = 48, quality: int = 80,
         color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG", quality=quality)
    return out.getvalue()


_colors = itertools.count(1)


def distinct_jpeg(width: int = 64, height: int = 48) -> bytes:
    """A JPEG no other call returns (a new picture, not a repaint)."""
    n = next(_colors)
    return jpeg(width, height, color=(n * 37 % 256, n * 91 % 256, n * 13 % 256))


class FakeBrowser:
    """One 'browser': the pages attached to it share its state, like CDP clients of Chrome."""

    def __init__(self, cdp_url: str) -> None:
        self.cdp_url = cdp_url
        self.url = "about:blank"
        self.inputs: list[tuple[str, tuple[Any, ...]]] = []
        self.pages: list[FakePage] = []
        self.quit = False


class FakePage:
    """``sessions.session.Page`` over a ``FakeBrowser``: navigation and input are recorded,
    frames are pushed by the test with ``paint``."""

    def __init__(self, browser: FakeBrowser, viewport: Viewport) -> None:
        self.browser = browser
        self.viewport = viewport
        self.log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(
            logging.getLogger("fake-page"), {})
        self.blocked_requests = 0
        self.quality = 0
        self.closed = False
        self._on_frame: Callable[[bytes, int, int], object] | None = None
        self._on_gone: list[Callable[[str], None]] = []
        self._on_info: list[Callable[[dict[str, Any]], None]] = []

    def paint(self, image: bytes | None = None) -> None:
        """Chrome's screencast sends a frame."""
        if self._on_frame is not None and not self.closed:
            self._on_frame(image or distinct_jpeg(self.viewport.width, self.viewport.height),
                           self.viewport.width, self.viewport.height)

    def crash(self, reason: str = "crashed") -> None:
        for callback in self._on_gone:
            callback(reason)

    def set_frame_callback(self, callback: Callable[[bytes, int, int], object] | None) -> None:
        self._on_frame = callback

    def on_gone(self, callback: Callable[[str], None]) -> None:
        self._on_gone.append(callback)

    def on_info(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self._on_info.append(callback)

    def follow(self, url: str) -> None:
        """The page went elsewhere by itself (a link, a form, a script): Chrome tells."""
        self.browser.url = url
        for callback in self._on_info:
            callback({"title": f"title of {url}", "url": url})

    async def start_screencast(self, quality: int) -> None:
        self.quality = quality
        self.paint()  # Chrome sends the current picture when a screencast starts

    async def navigate(self, url: str, timeout: float) -> dict[str, Any]:
        self.browser.url = url
        return await self.page_info()

    async def page_info(self) -> dict[str, Any]:
        return {"title": f"title of {self.browser.url}", "url": self.browser.url}

    async def close(self) -> None:
        self.closed = True

    async def click(self, x: float, y: float) -> None:
        self.browser.inputs.append(("click", (x, y)))

    async def scroll(self, delta_x: float, delta_y: float,
                     x: float | None = None, y: float | None = None) -> None:
        self.browser.inputs.append(("scroll", (delta_x, delta_y)))

    async def key(self, name: str) -> None:
        self.browser.inputs.append(("key", (name,)))

    async def insert_text(self, text: str) -> None:
        self.browser.inputs.append(("text", (text,)))


class FakeLease(BrowserLease):
    def __init__(self, endpoint: BrowserEndpoint, browsers: FakeBrowsers) -> None:
        super().__init__(endpoint)
        self._browsers = browsers

    async def release(self) -> None:
        self._browsers.by_url[self.endpoint.cdp_url].quit = True


class FakeBrowsers:
    """A ``BrowserProvider`` plus the ``attach`` the manager uses: browsers live here, so
    several managers (streamers) can attach to one, as after a fleet failover."""

    def __init__(self, kind: str = "grid") -> None:
        self.kind = kind
        self.by_url: dict[str, FakeBrowser] = {}
        self.warm = 0
        self.refills = 0

    # BrowserProvider
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def acquire(self, width: int, height: int, scale: float = 1.0) -> BrowserLease:
        url = f"ws://fake/{secrets.token_hex(4)}"
        self.by_url[url] = FakeBrowser(url)
        return FakeLease(BrowserEndpoint(self.kind, url), self)

    def lease_for(self, endpoint: BrowserEndpoint) -> BrowserLease:
        return FakeLease(endpoint, self)

    def request_refill(self) -> None:
        self.refills += 1

    async def find(self, name: str) -> tuple[BrowserLease, Viewport] | None:
        return None

    async def listed(self) -> list[dict[str, Any]]:
        return []

    # PageAttacher
    async def attach(self, endpoint: BrowserEndpoint, policy: UrlPolicy,
                     viewport: Viewport) -> Page:
        cdp_url = endpoint.cdp_url
        browser = self.by_url.get(cdp_url)
        if browser is None or browser.quit:
            raise ConnectionError(f"no browser at {cdp_url}")
        page = FakePage(browser, viewport)
        browser.pages.append(page)
        return page

    def page_of(self, session: Any) -> FakePage:
        """The page a local session drives."""
        page = session.page
        assert isinstance(page, FakePage)
        return page


class LocalBus:
    """The fleet's ``Bus`` between managers in one process: frame channels and requests are
    delivered directly (like Redis pub/sub: to every watcher, nothing stored)."""

    class Network:
        def __init__(self) -> None:
            self.watchers: dict[str, dict[str, MessageListener]] = defaultdict(dict)
            self.servers: dict[str, RequestHandler] = {}
            self.published = 0
            self.down: set[str] = set()
            """Streamers that no longer answer (killed)."""

    def __init__(self, network: LocalBus.Network, streamer_id: str) -> None:
        self.network = network
        self.streamer_id = streamer_id

    async def start(self, on_request: RequestHandler) -> None:
        self.network.servers[self.streamer_id] = on_request

    async def stop(self) -> None:
        self.network.servers.pop(self.streamer_id, None)
        for watchers in self.network.watchers.values():
            watchers.pop(self.streamer_id, None)

    async def watch(self, session_id: str, listener: MessageListener) -> None:
        self.network.watchers[session_id][self.streamer_id] = listener

    async def unwatch(self, session_id: str) -> None:
        self.network.watchers[session_id].pop(self.streamer_id, None)

    async def publish(self, session_id: str, payload: bytes) -> None:
        self.network.published += 1
        for streamer_id, listener in list(self.network.watchers[session_id].items()):
            if streamer_id not in self.network.down:
                listener(payload)

    async def listeners(self, session_ids: list[str]) -> dict[str, int]:
        return {i: len(self.network.watchers[i]) for i in session_ids}

    async def call(self, streamer_id: str, op: str, session_id: str,
                   args: dict[str, Any] | None = None, timeout: float = 10.0
                   ) -> dict[str, Any]:
        server = self.network.servers.get(streamer_id)
        if server is None or streamer_id in self.network.down:
            raise RelayError("the streamer that owns this session is not reachable", 503)
        try:
            return await asyncio.wait_for(server(op, session_id, dict(args or {})), timeout)
        except ClientError as exc:
            raise RelayError(exc.message, exc.status) from None


class FakeTransport:
    """A pacer's transport whose drain the test controls: ``drain_delay`` seconds per frame,
    or held until ``release()`` while ``hold`` is set."""

    name = "fake"

    def __init__(self, drain_delay: float = 0.0) -> None:
        self.drain_delay = drain_delay
        self.sent: list[tuple[Frame, bytes]] = []
        self.hold = False
        self._released = asyncio.Event()

    async def send_frame(self, frame: Frame, image: bytes, sub: Subscriber) -> None:
        self.sent.append((frame, image))

    async def drained(self) -> None:
        if self.hold:
            await self._released.wait()
            self._released.clear()
        elif self.drain_delay:
            await asyncio.sleep(self.drain_delay)

    def release(self) -> None:
        self.hold = False
        self._released.set()


def settings(**overrides: Any) -> Settings:
    base = Settings()
    return base.__class__(**{**base.__dict__, **overrides})
