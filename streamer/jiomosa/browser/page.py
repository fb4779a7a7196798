"""The fast path to one browser's page: screencast, input and navigation over CDP.

``BrowserPage.attach`` connects to a browser's DevTools websocket (whoever started the browser:
local chromedriver, a Grid, a Kubernetes pod), picks its page, applies the viewport, turns on
the URL policy for every request the browser makes, and starts the screencast. Chrome encodes
the JPEG itself and sends a frame only when the page changes; each is acknowledged at once so
that Chrome never waits on us.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from typing import Any

from jiomosa.browser.cdp import CDPConnection, CDPError
from jiomosa.browser.fetchguard import RequestGuard
from jiomosa.core.errors import ClientError
from jiomosa.core.tasks import TaskSet
from jiomosa.core.types import KEYS, Viewport, jpeg_size
from jiomosa.core.urlpolicy import UrlPolicy, UrlRejected

log = logging.getLogger(__name__)


class NavigationError(ClientError):
    """The page could not be loaded; the message is safe to show to clients."""

    status = 502


class InputError(ClientError, ValueError):
    """An input event could not be applied; the message is safe to show to clients."""


STALE_WINDOW = 2.0  # seconds after a viewport change in which wrong-sized frames are dropped
FRAME_AFTER_LOAD_WAIT = 1.0  # seconds; a page that never paints does not hold a load forever

FrameCallback = Callable[[bytes, int, int, dict[str, Any]], object]
"""Called with each screencast JPEG, its width and height in pixels and Chrome's metadata of
it (``Page.ScreencastFrameMetadata``: scroll offsets, page scale, device size)."""


class BrowserPage:
    """One attached page. Owns nothing but the CDP connection: quitting the browser is the
    job of whoever started it."""

    def __init__(
        self,
        conn: CDPConnection,
        target_id: str,
        session_id: str,
        policy: UrlPolicy,
        viewport: Viewport,
    ) -> None:
        self._conn = conn
        self.target_id = target_id
        self._sid = session_id
        self._policy = policy
        self.viewport = viewport
        self._on_frame: FrameCallback | None = None
        self._on_gone: list[Callable[[str], None]] = []
        self._on_info: list[Callable[[dict[str, Any]], None]] = []
        self._quality = 80
        self._screencasting = False
        self._load_waiters: list[asyncio.Future[None]] = []
        self._frame_waiters: list[asyncio.Future[None]] = []
        self._tasks = TaskSet("page")
        self.gone_reason: str | None = None
        self.log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(log, {})
        """Where this page logs; owners add context (e.g. the session id)."""
        self.last_frame_meta: dict[str, Any] = {}
        self.last_frame_size: tuple[int, int] = (viewport.frame_width, viewport.frame_height)
        self.blocked_requests = 0
        self._viewport_changed = 0.0
        self._refreshing = False

    # ----------------------------------------------------------------- attach / detach
    @classmethod
    async def attach(
        cls, cdp_url: str, policy: UrlPolicy, viewport: Viewport, timeout: float = 15.0,
        token: str = "",
    ) -> BrowserPage:
        """Connect to a browser and take control of its (first) page."""
        conn = await CDPConnection.connect(cdp_url, timeout=timeout, token=token)
        try:
            targets = await conn.send("Target.getTargets", timeout=timeout)
            pages = [t for t in targets.get("targetInfos", []) if t.get("type") == "page"]
            if pages:
                target_id = pages[0]["targetId"]
            else:
                created = await conn.send("Target.createTarget", {"url": "about:blank"})
                target_id = created["targetId"]
            attached = await conn.send(
                "Target.attachToTarget", {"targetId": target_id, "flatten": True}, timeout=timeout
            )
            page = cls(conn, target_id, attached["sessionId"], policy, viewport)
            await page._setup()
        except BaseException:
            await conn.close()
            raise
        return page

    async def _setup(self) -> None:
        conn, sid = self._conn, self._sid
        conn.on("Page.screencastFrame", self._handle_frame, sid)
        conn.on("Page.loadEventFired", self._handle_load, sid)
        conn.on("Inspector.targetCrashed", lambda _: self._gone("crashed"), sid)
        conn.on("Target.detachedFromTarget", self._handle_detached)
        conn.on("Target.targetDestroyed", self._handle_destroyed)
        conn.on("Target.targetCreated", self._handle_target_created)
        conn.on("Target.targetInfoChanged", self._handle_info_changed)
        conn.on_close(lambda: self._gone("browser connection closed"))
        # No downloads, browser-wide and before anything loads: a local browser would write
        # them to the streamer's disk ($HOME/Downloads), kept after the session and unbounded.
        await conn.send("Browser.setDownloadBehavior", {"behavior": "deny"})
        # Browser-wide interception: covers the page, its out-of-process iframes and workers.
        await RequestGuard(conn, self._policy, self._tasks, self._blocked).enable()
        await conn.send("Target.setDiscoverTargets", {"discover": True})
        await asyncio.gather(
            conn.send("Page.enable", session_id=sid),
            conn.send("Inspector.enable", session_id=sid),
            self.apply_viewport(self.viewport),
        )

    async def close(self) -> None:
        """Stop the screencast and disconnect (the browser itself keeps running)."""
        await self._tasks.close()
        await self._conn.close()

    def on_gone(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` once when the page or browser disappears."""
        self._on_gone.append(callback)

    def on_info(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback({title, url})`` whenever the page's title or URL changes (links,
        scripts and forms too, not only ``navigate``): once the browser is dead, nobody can
        ask it where it was."""
        self._on_info.append(callback)

    # ----------------------------------------------------------------- viewport
    async def apply_viewport(self, viewport: Viewport) -> None:
        self.viewport = viewport
        self._viewport_changed = time.monotonic()
        sid = self._sid
        calls = [
            self._conn.send(
                "Emulation.setDeviceMetricsOverride",
                {
                    "width": viewport.width,
                    "height": viewport.height,
                    "deviceScaleFactor": viewport.device_scale_factor,
                    "mobile": viewport.mobile,
                },
                session_id=sid,
            ),
            self._conn.send(
                "Emulation.setTouchEmulationEnabled",
                {"enabled": viewport.mobile, "maxTouchPoints": 5},
                session_id=sid,
            ),
        ]
        if viewport.user_agent:
            calls.append(
                self._conn.send(
                    "Emulation.setUserAgentOverride",
                    {"userAgent": viewport.user_agent},
                    session_id=sid,
                )
            )
        await asyncio.gather(*calls)
        if self._screencasting:
            await self.start_screencast(self._quality)

    # ----------------------------------------------------------------- screencast
    def set_frame_callback(self, callback: FrameCallback | None) -> None:
        self._on_frame = callback

    async def start_screencast(self, quality: int) -> None:
        """(Re)start the screencast at ``quality``; Chrome then sends a frame at once."""
        self._quality = quality
        params = {
            "format": "jpeg",
            "quality": quality,
            "maxWidth": self.viewport.frame_width,
            "maxHeight": self.viewport.frame_height,
            "everyNthFrame": 1,
        }
        for attempt in range(20):
            try:
                if self._screencasting:
                    await self._conn.send("Page.stopScreencast", session_id=self._sid)
                await self._conn.send("Page.startScreencast", params, session_id=self._sid)
                break
            except CDPError as exc:
                # While a navigation swaps the renderer the page briefly has no frame to
                # capture; it comes back within a few milliseconds.
                if "Not attached" not in str(exc) or attempt == 19:
                    raise
                await asyncio.sleep(0.05)
        self._screencasting = True

    async def _settle(self) -> None:
        """Return once the loaded page is on screen, so that the frame a client gets next shows
        it and not the page before: wait for two animation frames (the page's first paint is
        then committed) and make the screencast emit a fresh frame."""
        try:
            await self._conn.send(
                "Runtime.evaluate",
                {"expression": "new Promise(r => requestAnimationFrame("
                               "() => requestAnimationFrame(() => r(true))))",
                 "awaitPromise": True, "returnByValue": True},
                session_id=self._sid, timeout=FRAME_AFTER_LOAD_WAIT)
            if self._screencasting:
                fresh = asyncio.ensure_future(self.next_frame(FRAME_AFTER_LOAD_WAIT))
                await self.force_frame()
                await fresh
        except CDPError:
            pass  # a page that never paints does not hold the answer

    async def force_frame(self) -> None:
        """Make Chrome paint once, so the screencast emits the current picture."""
        # A screencast restart always emits a fresh frame, whatever the page is doing.
        await self.start_screencast(self._quality)

    def _handle_frame(self, params: dict[str, Any]) -> None:
        # Ack first: Chrome sends the next frame only after the previous one is acked.
        self._conn.send_nowait(
            "Page.screencastFrameAck", {"sessionId": params.get("sessionId")}, self._sid
        )
        try:
            jpeg = base64.b64decode(params["data"])
        except (KeyError, ValueError):
            return
        meta = params.get("metadata", {})
        try:
            width, height = jpeg_size(jpeg)
        except ValueError:
            return
        if self._stale(meta, width, height):
            if not self._refreshing:
                # An unchanging page sends no next frame by itself: ask for one.
                self._refreshing = True
                self._tasks.spawn(self._refresh(), "stale-refresh")
            return
        self.last_frame_meta = meta
        self.last_frame_size = (width, height)
        if self._on_frame is not None:
            self._on_frame(jpeg, width, height, meta)
        waiters, self._frame_waiters = self._frame_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _stale(self, meta: dict[str, Any], frame_width: int, frame_height: int) -> bool:
        """A frame painted before the viewport override took effect (the screencast may start
        with the compositor's previous frame): drop it rather than show the wrong size. Only
        right after a change, so that a page whose metrics differ is never starved."""
        if time.monotonic() - self._viewport_changed > STALE_WINDOW:
            return False
        # The previous frame may come under metadata that already tells the new metrics (after
        # another client's override ended: the operator's, before a streamer attaches to a
        # browser pod): its picture still has the old shape.
        if (abs(frame_width - self.viewport.frame_width) > 1
                or abs(frame_height - self.viewport.frame_height) > 1):
            return True
        width, height = meta.get("deviceWidth"), meta.get("deviceHeight")
        if not isinstance(width, int | float) or not isinstance(height, int | float):
            return False
        return (abs(width - self.viewport.width) > 1
                or abs(height - self.viewport.height) > 1)

    async def _refresh(self) -> None:
        try:
            await asyncio.sleep(0.05)
            await self.force_frame()
        except CDPError:
            pass
        finally:
            self._refreshing = False

    async def next_frame(self, timeout: float) -> bool:
        """Wait for the next screencast frame; False if none came within ``timeout``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._frame_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False

    # ----------------------------------------------------------------- navigation
    async def navigate(self, url: str, timeout: float) -> dict[str, Any]:
        """Load ``url`` and wait (at most ``timeout``) for its load event."""
        await self._policy.check(url)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._load_waiters.append(waiter)
        try:
            result = await self._conn.send(
                "Page.navigate", {"url": url}, session_id=self._sid, timeout=timeout
            )
            error = result.get("errorText")
            if error:
                if "BLOCKED_BY_CLIENT" in error:
                    raise NavigationError("the URL is blocked by the URL policy")
                raise NavigationError(f"navigation failed: {error}")
            if result.get("loaderId"):
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), timeout)
                except TimeoutError:
                    self.log.info("load event did not come within %.0fs", timeout)
                else:
                    await self._settle()
        except CDPError as exc:
            raise NavigationError(str(exc)) from None
        finally:
            if waiter in self._load_waiters:
                self._load_waiters.remove(waiter)
        return await self.page_info()

    def _handle_load(self, _params: dict[str, Any]) -> None:
        for waiter in self._load_waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def page_info(self) -> dict[str, Any]:
        info = await self._conn.send("Target.getTargetInfo", {"targetId": self.target_id})
        target = info.get("targetInfo", {})
        return {"title": target.get("title", ""), "url": target.get("url", "")}

    # ----------------------------------------------------------------- input
    def frame_to_css(self, x: float, y: float) -> tuple[float, float]:
        """Map a point in frame pixels to CSS pixels of the viewport."""
        fw, fh = self.last_frame_size
        meta = self.last_frame_meta
        dw = float(meta.get("deviceWidth") or self.viewport.width)
        dh = float(meta.get("deviceHeight") or self.viewport.height)
        if not (0 <= x <= fw and 0 <= y <= fh):
            raise InputError(f"point ({x:g}, {y:g}) is outside the {fw}x{fh} frame")
        return x * dw / fw, y * dh / fh + float(meta.get("offsetTop") or 0.0)

    async def click(self, x: float, y: float, button: str = "left") -> None:
        cx, cy = self.frame_to_css(x, y)
        base = {"x": cx, "y": cy, "button": button, "clickCount": 1, "buttons": 1}
        send = self._conn.send
        # Pressed and released are awaited together: Chrome answers each after the renderer
        # has handled it, so the ack we give the client is the truth.
        await asyncio.gather(
            send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": cx, "y": cy,
                                              "button": "none"}, self._sid),
            send("Input.dispatchMouseEvent", {"type": "mousePressed", **base}, self._sid),
            send("Input.dispatchMouseEvent", {"type": "mouseReleased", **base, "buttons": 0},
                 self._sid),
        )

    async def scroll(self, delta_x: float, delta_y: float,
                     x: float | None = None, y: float | None = None) -> None:
        if x is None or y is None:
            cx, cy = self.viewport.width / 2, self.viewport.height / 2
        else:
            cx, cy = self.frame_to_css(x, y)
        await self._conn.send(
            "Input.dispatchMouseEvent",
            {"type": "mouseWheel", "x": cx, "y": cy, "deltaX": delta_x, "deltaY": delta_y},
            self._sid,
        )

    async def key(self, name: str) -> None:
        spec = KEYS.get(name)
        if spec is None:
            if len(name) == 1 and name.isprintable():
                await self.insert_text(name)
                return
            raise InputError(f"unknown key {name!r}")
        down: dict[str, Any] = {
            "type": "keyDown" if spec.text else "rawKeyDown",
            "key": spec.key,
            "code": spec.code,
            "windowsVirtualKeyCode": spec.key_code,
            "nativeVirtualKeyCode": spec.key_code,
        }
        if spec.text:
            down["text"] = spec.text
            down["unmodifiedText"] = spec.text
        up = {k: v for k, v in down.items() if k not in ("text", "unmodifiedText")}
        up["type"] = "keyUp"
        await asyncio.gather(
            self._conn.send("Input.dispatchKeyEvent", down, self._sid),
            self._conn.send("Input.dispatchKeyEvent", up, self._sid),
        )

    async def insert_text(self, text: str) -> None:
        await self._conn.send("Input.insertText", {"text": text}, self._sid)

    def _blocked(self, url: str) -> None:
        self.blocked_requests += 1
        self.log.info("blocked request to %s", url)

    # ----------------------------------------------------------------- popups and death
    def _handle_target_created(self, params: dict[str, Any]) -> None:
        info = params.get("targetInfo", {})
        if info.get("type") == "page" and info.get("openerId") == self.target_id:
            # The device shows one page: a popup or target=_blank link replaces it.
            self._tasks.spawn(self._adopt_popup(info["targetId"]), "popup")

    async def _adopt_popup(self, target_id: str) -> None:
        url = ""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                info = await self._conn.send("Target.getTargetInfo", {"targetId": target_id})
            except CDPError:
                return
            url = info.get("targetInfo", {}).get("url", "")
            if url and url != "about:blank":
                break
            await asyncio.sleep(0.05)
        try:
            await self._conn.send("Target.closeTarget", {"targetId": target_id})
            if url and url != "about:blank":
                await self._policy.check(url)
                await self._conn.send("Page.navigate", {"url": url}, session_id=self._sid)
        except (CDPError, UrlRejected):
            pass

    def _handle_info_changed(self, params: dict[str, Any]) -> None:
        info = params.get("targetInfo", {})
        if info.get("targetId") != self.target_id:
            return
        page = {"title": str(info.get("title", "")), "url": str(info.get("url", ""))}
        for callback in self._on_info:
            callback(page)

    def _handle_detached(self, params: dict[str, Any]) -> None:
        if params.get("sessionId") == self._sid:
            self._gone("page detached")

    def _handle_destroyed(self, params: dict[str, Any]) -> None:
        if params.get("targetId") == self.target_id:
            self._gone("page closed")

    def _gone(self, reason: str) -> None:
        if self.gone_reason is not None:
            return
        self.gone_reason = reason
        for callback in self._on_gone:
            try:
                callback(reason)
            except Exception:
                self.log.exception("page gone callback failed")

