"""Sessions: one browser page, its frame hub and its life (idle timeout, max duration, crash)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from jiomosa import metrics
from jiomosa.browser.driver import BrowserStartError
from jiomosa.browser.page import BrowserPage, Viewport
from jiomosa.browsers import BrowserLease, PooledProvider
from jiomosa.settings import Settings
from jiomosa.streaming import FrameHub
from jiomosa.urlpolicy import UrlPolicy

log = logging.getLogger(__name__)

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
FAILED_RETENTION = 60.0  # seconds a failed session stays visible before it is forgotten


class SessionError(Exception):
    """A request about a session cannot be served; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


class Session:
    """A live browser session on this streamer."""

    def __init__(self, session_id: str, viewport: Viewport, settings: Settings) -> None:
        self.id = session_id
        self.viewport = viewport
        self.created_at = time.time()
        self.last_activity = self.created_at
        self.state = "starting"
        self.error: str | None = None
        self.close_reason: str | None = None
        self.page: BrowserPage | None = None
        self.lease: BrowserLease | None = None
        self.hub = FrameHub(session_id, settings.default_quality)
        self.page_info: dict[str, Any] = {"title": "", "url": "about:blank"}
        self.log = logging.LoggerAdapter(log, {"session_id": session_id})
        self._source_quality = settings.default_quality
        self._input_lock = asyncio.Lock()
        self.ended = asyncio.Event()

    # --------------------------------------------------------------- views
    def touch(self) -> None:
        self.last_activity = time.time()

    def info(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "created_at": self.created_at,
            "last_activity": self.last_activity,
            "status": self.state,
            "page_info": self.page_info_view(),
            "viewport": self.viewport.to_dict(),
            "subscribers": len(self.hub.subscribers),
            "frame_seq": self.hub.latest.seq if self.hub.latest else 0,
            "clients": [{"id": sub.id[:8], "transport": sub.transport.name, **sub.stats()}
                        for sub in self.hub.subscribers.values()],
            **({"error": self.error} if self.error else {}),
        }

    def page_info_view(self) -> dict[str, Any]:
        return {
            "title": self.page_info.get("title", ""),
            "url": self.page_info.get("url", ""),
            "session_id": self.id,
            "window_size": {"width": self.viewport.width, "height": self.viewport.height},
        }

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "created_at": self.created_at,
            "last_activity": self.last_activity,
            "current_page": self.page_info.get("url", ""),
            "status": self.state,
        }

    # --------------------------------------------------------------- browser operations
    def require_page(self) -> BrowserPage:
        if self.state == "failed":
            raise SessionError(f"session failed: {self.error}", 409)
        if self.page is None or self.state != "ready":
            raise SessionError("session is not ready", 409)
        return self.page

    async def load(self, url: str, timeout: float) -> dict[str, Any]:
        page = self.require_page()
        self.touch()
        self.page_info = await page.navigate(url, timeout)
        self.touch()
        return self.page_info_view()

    async def refresh_page_info(self) -> None:
        if self.page is not None and self.state == "ready":
            with contextlib.suppress(Exception):
                self.page_info = await self.page.page_info()

    async def dispatch(self, kind: str, action: Callable[[BrowserPage], Awaitable[None]]) -> float:
        """Run one input action; return its latency in seconds (arrival to Chrome's answer)."""
        page = self.require_page()
        self.touch()
        started = time.perf_counter()
        async with self._input_lock:  # input order is the user's order
            await action(page)
        elapsed = time.perf_counter() - started
        metrics.INPUT_LATENCY.labels(kind).observe(elapsed)
        return elapsed

    async def set_source_quality(self, quality: int) -> None:
        """Chrome encodes at the best quality any client asked for; others get re-encodes."""
        if quality == self._source_quality or self.page is None or self.state != "ready":
            return
        self._source_quality = quality
        self.hub.source_quality = quality
        await self.page.start_screencast(quality)


Notifier = Callable[[Session, str], Awaitable[None]]


@dataclass
class Capacity:
    live: int
    limit: int


class SessionManager:
    """Creates, finds and ends the sessions of this streamer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = UrlPolicy.from_allow_list(settings.allow_hosts)
        self.sessions: dict[str, Session] = {}
        self.provider = PooledProvider(settings, lambda: len(self.sessions))
        self._closed_notifiers: list[Notifier] = []
        self._reaper: asyncio.Task[None] | None = None
        self._creating = 0
        self._background: set[asyncio.Task[Any]] = set()

    # --------------------------------------------------------------- life of the manager
    async def start(self) -> None:
        if self.settings.warm_browsers:
            await self.provider.start()
        self._reaper = asyncio.create_task(self._reap_loop(), name="session-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(BaseException):
                await self._reaper
        await self.close_all("server shutdown")
        await self.provider.stop()
        for task in list(self._background):
            task.cancel()

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(self.close(s.id, reason) for s in list(self.sessions.values())),
                             return_exceptions=True)

    def on_closed(self, notifier: Notifier) -> None:
        """Call ``notifier(session, reason)`` before a session's subscribers are dropped."""
        self._closed_notifiers.append(notifier)

    # --------------------------------------------------------------- lookups
    def get(self, session_id: Any) -> Session:
        if not isinstance(session_id, str) or session_id not in self.sessions:
            raise SessionError("Session not found", 404)
        return self.sessions[session_id]

    def all(self) -> Iterable[Session]:
        return list(self.sessions.values())

    def capacity(self) -> Capacity:
        live = sum(1 for s in self.sessions.values() if s.state in ("starting", "ready"))
        return Capacity(live, self.settings.max_sessions)

    # --------------------------------------------------------------- create / close
    async def create(self, session_id: str | None, viewport: Viewport,
                     url: str | None) -> Session:
        if session_id is None:
            session_id = secrets.token_urlsafe(24)  # 192 random bits
        elif not SESSION_ID_RE.match(session_id):
            raise SessionError(
                "session_id must be 1-128 characters of letters, digits, '_', '-', '.', ':'"
            )
        if session_id in self.sessions:
            metrics.SESSION_REJECTED.labels("duplicate").inc()
            raise SessionError("Session already exists", 400, session_id=session_id)
        if url is not None:
            await self.policy.check(url)
        if self.capacity().live >= self.settings.max_sessions:
            metrics.SESSION_REJECTED.labels("capacity").inc()
            raise SessionError("Too many sessions: the server is at capacity", 503,
                               max_sessions=self.settings.max_sessions)
        started = time.perf_counter()
        session = Session(session_id, viewport, self.settings)
        self.sessions[session_id] = session
        try:
            await self._open_browser(session)
            if url:
                session.page_info = await session.require_page().navigate(
                    url, self.settings.navigation_timeout)
        except BaseException as exc:
            await self._discard(session)
            if isinstance(exc, BrowserStartError):
                raise SessionError(str(exc), 503) from None
            raise
        metrics.SESSIONS_CREATED.inc()
        metrics.CREATE_SECONDS.observe(time.perf_counter() - started)
        session.log.info("session created in %.0f ms", (time.perf_counter() - started) * 1000)
        return session

    async def _open_browser(self, session: Session) -> None:
        vp = session.viewport
        last_error: Exception | None = None
        for _ in range(2):  # a pooled browser may have died: one retry with a fresh one
            lease = await self.provider.acquire(vp.width, vp.height, vp.device_scale_factor)
            try:
                page = await BrowserPage.attach(lease.endpoint.cdp_url, self.policy, vp)
            except Exception as exc:
                last_error = exc
                await lease.release()
                continue
            session.lease, session.page = lease, page
            page.set_frame_callback(lambda jpeg, _meta: self._on_frame(session, jpeg))
            page.on_gone(lambda reason: self._on_page_gone(session, reason))
            session.state = "ready"
            await page.start_screencast(self.settings.default_quality)
            return
        session.log.warning("browser attach failed: %s", last_error)
        raise BrowserStartError("the browser could not be attached")

    def _on_frame(self, session: Session, jpeg: bytes) -> None:
        frame = session.hub.publish(jpeg)
        if frame is not None and session.page is not None:
            session.page.last_frame_size = (frame.width, frame.height)

    def _on_page_gone(self, session: Session, reason: str) -> None:
        if session.state in ("closing", "closed", "failed"):
            return
        session.log.warning("browser gone: %s", reason)
        session.state = "failed"
        session.error = f"browser {reason}"
        self._spawn(self._fail(session), f"fail-{session.id}")

    async def _fail(self, session: Session) -> None:
        await self._notify_closed(session, "failed")
        await session.hub.close()
        await self._release(session)
        metrics.SESSIONS_CLOSED.labels("failed").inc()
        session.ended.set()
        # Keep the failed session visible for a while so that clients learn what happened.
        await asyncio.sleep(FAILED_RETENTION)
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    async def close(self, session_id: str, reason: str = "closed by client") -> bool:
        session = self.sessions.get(session_id)
        if session is None:
            return False
        if session.state == "failed":
            self.sessions.pop(session_id, None)
            return True
        if session.state in ("closing", "closed"):
            return True
        session.state = "closing"
        session.close_reason = reason
        session.log.info("closing session: %s", reason)
        await self._notify_closed(session, reason)
        await self._discard(session)
        metrics.SESSIONS_CLOSED.labels(_reason_label(reason)).inc()
        return True

    async def _notify_closed(self, session: Session, reason: str) -> None:
        for notifier in self._closed_notifiers:
            try:
                await notifier(session, reason)
            except Exception:
                session.log.exception("close notifier failed")

    async def _discard(self, session: Session) -> None:
        session.state = "closed"
        self.sessions.pop(session.id, None)
        await session.hub.close()
        await self._release(session)
        session.ended.set()
        self.provider.request_refill()

    async def _release(self, session: Session) -> None:
        page, lease = session.page, session.lease
        session.page = session.lease = None
        if page is not None:
            metrics.BLOCKED_REQUESTS.inc(page.blocked_requests)
            with contextlib.suppress(Exception):
                await page.close()
        if lease is not None:
            with contextlib.suppress(Exception):
                await lease.release()

    # --------------------------------------------------------------- reaping
    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for session in list(self.sessions.values()):
                if session.state != "ready":
                    continue
                if session.hub.subscribers:
                    session.touch()  # a watched session is not idle
                reason = None
                if now - session.last_activity > self.settings.idle_timeout:
                    reason = "idle timeout"
                elif self.settings.max_duration and now - session.created_at > (
                        self.settings.max_duration):
                    reason = "max duration reached"
                if reason:
                    self._spawn(self.close(session.id, reason), f"reap-{session.id}")

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --------------------------------------------------------------- metrics
    def live_metrics(self) -> Iterable[tuple[str, dict[str, Any]]]:
        for session in list(self.sessions.values()):
            yield "session", {"state_name": session.state}
            for sub in list(session.hub.subscribers.values()):
                yield "client", {"transport_name": sub.transport.name,
                                 "actual_fps": sub.actual_fps, "fps": sub.fps}


def _reason_label(reason: str) -> str:
    for label in ("idle", "duration", "shutdown", "client"):
        if label in reason:
            return label
    return "other"


