"""The session manager: creates, finds, reaps and closes the sessions this streamer drives.

It knows one streamer only. A fleet (``jiomosa.fleet.coordinator.FleetManager``) extends it
the way python-socketio's ``AsyncPubSubManager`` extends ``AsyncManager``: it overrides the
registry hooks below (``_claim``, ``_saved``, ``_forgotten``, ``_find_elsewhere``,
``_list_elsewhere``, ``_close_elsewhere``, ``_tick``) and adds what a fleet needs. The
single-host path never runs fleet code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from jiomosa import metrics
from jiomosa.core.errors import ClientError, SessionError
from jiomosa.core.limits import Quota
from jiomosa.core.settings import Settings
from jiomosa.core.tasks import TaskSet
from jiomosa.core.types import BrowserEndpoint, BrowserStartError, SessionState, Viewport
from jiomosa.core.urlpolicy import UrlPolicy
from jiomosa.providers.base import BrowserLease, BrowserProvider
from jiomosa.sessions.session import (
    SESSION_ID_RE,
    SHARE_TOKEN_RE,
    LocalSession,
    Notifier,
    Page,
    Session,
    Share,
)

log = logging.getLogger(__name__)

FAILED_RETENTION = 60.0  # seconds a failed session stays visible before it is forgotten
RESTORE_WAIT = 5.0  # seconds a restarted browser waits for its page's load event before streaming
TICK = 1.0  # seconds between reaping sweeps (and, in a fleet, lease renewals)

PageAttacher = Callable[[BrowserEndpoint, UrlPolicy, Viewport], Awaitable[Page]]
"""Connects to a browser's DevTools endpoint and takes its page (``attach_page`` in app.py)."""


class SessionManager:
    """Every session this streamer drives."""

    def __init__(self, settings: Settings, provider: BrowserProvider, policy: UrlPolicy,
                 attach: PageAttacher, streamer_id: str) -> None:
        self.settings = settings
        self.provider = provider
        self.policy = policy
        self._attach = attach
        self.streamer_id = streamer_id
        self.sessions: dict[str, LocalSession] = {}
        """Sessions this streamer drives (and failed ones it still shows)."""
        self.quota_tags: dict[str, str] = {}
        """Session id -> the quota it was created under (``Quota.tag``: an API key's name or
        a client address), while this streamer holds the session."""
        self._closed_notifiers: list[Notifier] = []
        self._unshared_notifiers: list[Notifier] = []
        self._state_notifiers: list[Notifier] = []
        self._tasks = TaskSet("sessions")
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        """No more browser restarts: Ctrl-C kills the browsers with the streamer."""

    # =============================================================== registry hooks
    # The single-host registry is ``self.sessions``; a fleet also registers elsewhere.
    async def _claim(self, session: LocalSession) -> bool:
        """Register a new session beyond this process; False when its id is taken there."""
        return True

    async def _saved(self, session: LocalSession) -> None:
        """The session's state or page changed."""

    async def _forgotten(self, session_id: str) -> None:
        """The session is gone for good."""

    async def _find_elsewhere(self, session_id: str) -> Session | None:
        return None

    async def _list_elsewhere(self) -> list[dict[str, Any]]:
        return []

    async def _close_elsewhere(self, session_id: str, reason: str) -> bool:
        return False

    async def _find_share_elsewhere(self, token: str) -> Session | None:
        """The session another streamer drives whose share link ``token`` is."""
        return None

    async def _tick(self) -> None:
        self._reap()

    # =============================================================== life of the manager
    async def start(self) -> None:
        await self.provider.start()
        self._ticker = asyncio.create_task(self._tick_loop(), name="session-ticker")

    async def shutdown(self) -> None:
        """Graceful end (SIGTERM): close every session; their clients are told."""
        self._stopping = True
        await self.close_all("server shutdown")

    async def stop(self) -> None:
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(BaseException):
                await self._ticker
        await self.close_all("server shutdown")
        await self.provider.stop()
        await self._tasks.close()

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(self.close(s.id, reason) for s in list(self.sessions.values())),
                             return_exceptions=True)

    def on_closed(self, notifier: Notifier) -> None:
        """Call ``notifier(session, reason)`` before a session's subscribers are dropped."""
        self._closed_notifiers.append(notifier)

    def on_unshared(self, notifier: Notifier) -> None:
        """Call ``notifier(session, "share revoked")`` when a share link of ``session`` was
        revoked: its viewers must stop seeing the session (``session.shares`` is the rest)."""
        self._unshared_notifiers.append(notifier)

    def on_state(self, notifier: Notifier) -> None:
        """Call ``notifier(session, state)`` when a live session changes state on its own:
        ``recovering`` (its browser died and a new one is starting), ``ready`` (it is back)."""
        self._state_notifiers.append(notifier)

    async def notify_state(self, session: Session, state: str) -> None:
        for notifier in self._state_notifiers:
            try:
                await notifier(session, state)
            except Exception:
                log.exception("state notifier failed")

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        self._tasks.spawn(_as_coroutine(coro), name)

    # =============================================================== lookups
    async def lookup(self, session_id: Any) -> Session:
        """The session a client names (404 when there is none)."""
        if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
            raise SessionError("Session not found", 404)
        found: Session | None = self.sessions.get(session_id)
        if found is None:
            found = await self._find_elsewhere(session_id)
        if found is None:
            found = await self._serve_from_backend(session_id)
        if found is None:
            raise SessionError("Session not found", 404)
        return found

    async def summaries(self, backend: bool = True) -> list[dict[str, Any]]:
        """Every session of this streamer (and of the fleet); with ``backend``, also the
        backend's browsers no streamer serves (kubectl-made BrowserSessions), which only the
        admin's list shows."""
        seen = {s.id: s.summary() for s in self.sessions.values()}
        for summary in await self._list_elsewhere():
            seen.setdefault(summary["session_id"], summary)
        if backend:
            try:
                for summary in await self.provider.listed():
                    seen.setdefault(summary["session_id"], summary)
            except Exception as exc:
                log.warning("cannot list the backend's browsers: %s", exc)
        return list(seen.values())

    async def lookup_share(self, token: Any) -> tuple[Session, Share]:
        """The session a share link opens, and the share (404 when there is none)."""
        if isinstance(token, str) and SHARE_TOKEN_RE.match(token):
            for session in list(self.sessions.values()):
                share = session.shares.get(token)
                if share is not None:
                    return session, share
            found = await self._find_share_elsewhere(token)
            if found is not None and token in found.shares:
                return found, found.shares[token]
        raise SessionError("Share not found", 404)

    # =============================================================== share links
    async def share(self, session: Session, allow_input: bool) -> Share:
        share = await session.share(allow_input)
        if isinstance(session, LocalSession):
            await self._saved(session)  # a fleet's streamers check shares in the registry
        return share

    async def unshare(self, session: Session, key: str) -> Share:
        share = await session.unshare(key)
        if share is None:
            raise SessionError("Share not found", 404)
        if isinstance(session, LocalSession):
            await self._saved(session)
        await self.notify_unshared(session)
        return share

    async def notify_unshared(self, session: Session) -> None:
        for notifier in self._unshared_notifiers:
            try:
                await notifier(session, "share revoked")
            except Exception:
                log.exception("share notifier failed")

    def live_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.state.live)

    def quota_used(self, tag: str) -> int:
        """Live sessions of this streamer created under the quota ``tag``."""
        return sum(1 for sid, t in self.quota_tags.items() if t == tag and (
            (s := self.sessions.get(sid)) is not None and s.state.live))

    # =============================================================== create / close
    async def create(self, session_id: str | None, viewport: Viewport,
                     url: str | None, quota: Quota | None = None) -> LocalSession:
        """A new session; ``quota``: whom it counts against (429 when they hold their
        ``max_sessions``: checked and counted with capacity, so concurrent creates cannot
        both pass)."""
        if session_id is None:
            session_id = secrets.token_urlsafe(24)  # 192 random bits
        elif not SESSION_ID_RE.match(session_id):
            raise SessionError(
                "session_id must be 1-128 characters of letters, digits, '_', '-', '.', ':'")
        if url is not None:
            await self.policy.check(url)
        started = time.perf_counter()
        session = await self._reserve(session_id, viewport, quota)
        try:
            await self._open_browser(session)
            if url:
                session.page_info = await session.require_page().navigate(
                    url, self.settings.navigation_timeout)
            await self._saved(session)
        except BaseException:
            await self._discard(session)
            raise
        session.touch()  # the idle clock starts when the session is ready, not when asked
        metrics.SESSIONS_CREATED.inc()
        metrics.CREATE_SECONDS.observe(time.perf_counter() - started)
        session.log.info("session created in %.0f ms", (time.perf_counter() - started) * 1000)
        return session

    async def _reserve(self, session_id: str, viewport: Viewport,
                       quota: Quota | None = None) -> LocalSession:
        """A new session in ``starting``, counted against capacity (and ``quota``) and
        registered."""
        if session_id in self.sessions:
            metrics.SESSION_REJECTED.labels("duplicate").inc()
            raise SessionError("Session already exists", 400, session_id=session_id)
        if quota is not None and quota.max_sessions and (
                self.quota_used(quota.tag) >= quota.max_sessions):
            metrics.SESSION_REJECTED.labels("quota").inc()
            raise SessionError(f"{quota.label} already holds {quota.max_sessions} live "
                               "sessions, its quota: close one first", 429,
                               max_sessions=quota.max_sessions)
        if self.live_count() >= self.settings.max_sessions:
            metrics.SESSION_REJECTED.labels("capacity").inc()
            raise SessionError("Too many sessions: the server is at capacity", 503,
                               max_sessions=self.settings.max_sessions)
        session = LocalSession(session_id, viewport, self.settings, owner=self.streamer_id)
        self.sessions[session_id] = session
        if quota is not None:
            for stale in [sid for sid in self.quota_tags if sid not in self.sessions]:
                del self.quota_tags[stale]  # gone another way (a failed one's retention)
            self.quota_tags[session_id] = quota.tag
        try:
            claimed = await self._claim(session)
        except BaseException:
            self._drop(session)
            raise
        if not claimed:
            self._drop(session)
            metrics.SESSION_REJECTED.labels("duplicate").inc()
            raise SessionError("Session already exists", 400, session_id=session_id)
        return session

    def _drop(self, session: LocalSession) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            self.quota_tags.pop(session.id, None)

    async def _open_browser(self, session: LocalSession) -> None:
        page, lease = await self._start_page(session)
        await self.wire(session, page, lease)

    async def _start_page(self, session: LocalSession) -> tuple[Page, BrowserLease]:
        """A browser from the provider, its page attached with the session's viewport."""
        vp = session.viewport
        last_error: Exception | None = None
        for _ in range(2):  # a pooled browser may have died: one retry with a fresh one
            lease = await self.provider.acquire(vp.width, vp.height, vp.device_scale_factor)
            try:
                page = await self._attach(lease.endpoint, self.policy, vp)
            except Exception as exc:
                last_error = exc
                await lease.release()
                continue
            return page, lease
        session.log.warning("browser attach failed: %s", last_error)
        raise BrowserStartError("the browser could not be attached")

    async def wire(self, session: LocalSession, page: Page, lease: BrowserLease) -> None:
        """Make ``page`` the session's page and start streaming it."""
        if session.state.ended:  # closed while its browser was starting
            await page.close()
            await lease.release()
            raise SessionError("the session was closed while starting", 409)
        session.lease = lease
        session.bind(page, lambda reason: self._on_page_gone(session, page, reason))
        session.state = SessionState.READY
        await page.start_screencast(self.settings.default_quality)

    async def _serve_from_backend(self, session_id: str) -> LocalSession | None:
        """Serve a browser the backend hands out for this id but no streamer serves (a
        BrowserSession made with kubectl, reached with its viewer token, never by its name):
        attach to it as a local session. The provider answers an id it cannot know with
        None, at no cost (``KubernetesProvider.find``)."""
        try:
            found = await self.provider.find(session_id)
        except Exception as exc:
            log.warning("backend lookup of %s failed: %s", session_id, exc)
            return None
        if found is None:
            return None
        if session_id in self.sessions:  # found meanwhile by a concurrent lookup
            return self.sessions[session_id]
        lease, viewport = found
        if any(s.lease is not None and s.lease.endpoint.cdp_url == lease.endpoint.cdp_url
               for s in self.sessions.values()):
            return None  # a browser this streamer already serves under another id
        try:
            session = await self._reserve(session_id, viewport)
        except SessionError as exc:
            await lease.release()  # a backend browser's lease only detaches (never quits)
            if exc.status == 400:
                return None  # another streamer took it meanwhile
            raise
        try:
            page = await self._attach(lease.endpoint, self.policy, viewport)
        except BaseException as exc:
            self._drop(session)
            await self._forgotten(session_id)
            await lease.release()
            if isinstance(exc, Exception):
                session.log.warning("cannot attach to the backend's browser: %s", exc)
                raise SessionError("the browser could not be attached", 503) from None
            raise
        await self.wire(session, page, lease)
        await self._saved(session)
        session.log.info("serving the backend's browser %s", session_id)
        return session

    async def close(self, session_id: str, reason: str = "closed by client") -> bool:
        session = self.sessions.get(session_id)
        if session is None:
            return await self._close_elsewhere(session_id, reason)
        if session.state == SessionState.FAILED:
            self._drop(session)
            await self._forgotten(session_id)
            return True
        if session.state.ended:
            return True
        session.state = SessionState.CLOSING
        session.log.info("closing session: %s", reason)
        await self.notify_closed(session, reason)
        await self._discard(session)
        metrics.SESSIONS_CLOSED.labels(_reason_label(reason)).inc()
        return True

    async def notify_closed(self, session: Session, reason: str) -> None:
        for notifier in self._closed_notifiers:
            try:
                await notifier(session, reason)
            except Exception:
                log.exception("close notifier failed")

    async def _discard(self, session: LocalSession) -> None:
        session.state = SessionState.CLOSED
        self._drop(session)
        # Out of the registry first: nobody may adopt a session whose browser is quitting.
        await self._forgotten(session.id)
        await session.hub.close()
        await self.release(session, quit_browser=True)
        self.provider.request_refill()

    async def release(self, session: LocalSession, quit_browser: bool) -> None:
        """Detach from the session's page; quit its browser too unless it lives on."""
        page, lease = session.page, session.lease
        session.page = session.lease = None
        await _let_go(page, lease, quit_browser)

    # =============================================================== failures
    def _on_page_gone(self, session: LocalSession, page: Page, reason: str) -> None:
        if session.page is not page or session.state.ended:
            return  # a page the session already let go of, or a session on its way out
        session.log.warning("browser gone: %s", reason)
        lease = session.lease
        # Not replaced while the streamer stops, nor when the backend only lent it to us (a
        # kubectl-made BrowserSession): the old end.
        ended = "failed"
        if not self._stopping and (lease is None or lease.replaceable):
            ended = session.crashes.note(time.monotonic(), self.settings.crash_restarts,
                                         self.settings.crash_window) or ""
        if ended:
            session.state = SessionState.FAILED
            detail = ended.removeprefix("failed").removeprefix(": ")
            session.error = f"browser {reason}" + (f" ({detail})" if detail else "")
            self.spawn(self._fail(session, ended), f"fail-{session.id}")
            return
        # Detached at once: whatever the dead page still reports is no longer the session's.
        session.state = SessionState.RECOVERING
        session.page = session.lease = None
        self.spawn(_let_go(page, lease, quit_browser=True), f"quit-dead-{session.id}")
        self.spawn(self._recover(session, reason), f"recover-{session.id}")

    async def _recover(self, session: LocalSession, reason: str) -> None:
        """Give a session whose browser died a new one from the same provider, like a fleet
        failover: same id, same hub (its clients keep their sockets and frame numbers go on),
        same viewport and quality, and the page it last showed. Input meanwhile answers 503.
        When no browser can be had, the session ends."""
        if session.state != SessionState.RECOVERING:
            return  # closed meanwhile (a crash while it was being created, say)
        # Told while the new browser starts: a client slow to take the notice delays nothing.
        telling = asyncio.ensure_future(self.notify_state(session, SessionState.RECOVERING))
        try:
            await self._saved(session)
            await self._restart(session, telling)
        except Exception as exc:
            if session.state != SessionState.RECOVERING:
                return
            if isinstance(exc, ClientError):
                session.log.warning("the browser could not be restarted: %s", exc)
            else:
                session.log.exception("the browser could not be restarted")
            session.state = SessionState.FAILED
            session.error = f"browser {reason}; the browser could not be restarted"
            await telling  # "recovering" reaches a client before "session:closed"
            await self._fail(session, "failed: the browser could not be restarted")

    async def _restart(self, session: LocalSession, telling: Awaitable[None]) -> None:
        page, lease = await self._start_page(session)
        if session.state != SessionState.RECOVERING or session.page is not None:
            await _let_go(page, lease, quit_browser=True)  # closed meanwhile
            return
        session.lease = lease
        session.bind(page, lambda why: self._on_page_gone(session, page, why))
        session.hub.new_source()
        if session.restore_url:
            # Streaming starts after the load (or RESTORE_WAIT): no blank page in between.
            timeout = min(self.settings.navigation_timeout, RESTORE_WAIT)
            try:
                session.page_info = await page.navigate(session.restore_url, timeout)
            except ClientError as exc:  # a site down or now refused: the browser still works
                session.log.warning("could not reopen %s: %s", session.restore_url, exc)
        try:
            if session.page is page and session.state == SessionState.RECOVERING:
                await page.start_screencast(session.hub.source_quality)
        except ClientError as exc:  # counts as one more crash: restarted again, or the end
            session.log.warning("the restarted browser does not stream: %s", exc)
            self._on_page_gone(session, page, "did not stream after a restart")
            return
        # Closed meanwhile (its new page went with it), or the new browser died as well (a
        # later recovery has it now): nothing more to do here.
        if session.page is not page or session.state != SessionState.RECOVERING:
            return
        session.state = SessionState.READY
        elapsed = time.monotonic() - session.crashes.times[-1]  # since the browser died
        metrics.BROWSER_RESTART_SECONDS.observe(elapsed)
        session.log.info("browser restarted %.0f ms after it died", elapsed * 1000)
        await telling  # "recovering" reaches a client before "ready"
        await self.notify_state(session, SessionState.READY)
        if session.state == SessionState.READY:
            await self._saved(session)

    async def _fail(self, session: LocalSession, reason: str = "failed") -> None:
        await self.notify_closed(session, reason)
        await session.hub.close()
        await self.release(session, quit_browser=True)
        await self._saved(session)
        metrics.SESSIONS_CLOSED.labels("failed").inc()
        # Keep the failed session visible for a while so that clients learn what happened.
        await asyncio.sleep(FAILED_RETENTION)
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            await self._forgotten(session.id)

    # =============================================================== the tick
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self._tick()
            except Exception:
                log.exception("session tick failed")

    def _reap(self) -> None:
        now = time.time()
        for session in list(self.sessions.values()):
            # A recovering session's clocks run on: a crash is no reason to live longer.
            if session.state not in (SessionState.READY, SessionState.RECOVERING):
                continue
            if session.hub.subscribers:
                session.touch()  # a watched session is not idle
            if session.lease is not None:
                session.lease.note_activity(session.last_activity)
            reason = None
            if now - session.last_activity > self.settings.idle_timeout:
                reason = "idle timeout"
            elif self.settings.max_duration and now - session.created_at > (
                    self.settings.max_duration):
                reason = "max duration reached"
            if reason:
                self.spawn(self.close(session.id, reason), f"reap-{session.id}")

    def hubs(self) -> Iterable[Any]:
        """Every hub local clients stream from."""
        return [s.hub for s in self.sessions.values()]

    def live_metrics(self) -> Iterable[tuple[str, dict[str, Any]]]:
        for session in list(self.sessions.values()):
            yield "session", {"state_name": str(session.state)}
        for hub in list(self.hubs()):
            for sub in list(hub.subscribers.values()):
                described = sub.describe()
                yield "client", {"transport_name": described["transport"],
                                 "actual_fps": described["actualFps"], "fps": described["fps"]}


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _let_go(page: Page | None, lease: BrowserLease | None, quit_browser: bool) -> None:
    """Disconnect from a page; quit its browser too when asked (errors: it is gone already)."""
    if page is not None:
        metrics.BLOCKED_REQUESTS.inc(page.blocked_requests)
        with contextlib.suppress(Exception):
            await page.close()
    if lease is not None and quit_browser:
        with contextlib.suppress(Exception):
            await lease.release()


def _reason_label(reason: str) -> str:
    for label in ("idle", "duration", "shutdown", "client"):
        if label in reason:
            return label
    return "other"
