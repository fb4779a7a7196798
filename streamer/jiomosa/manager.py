"""The session manager: creates, finds, reaps and hands off sessions, alone or in a fleet.

Alone (``JIOMOSA_STORE=memory``) every session is local. In a fleet (``redis``) each session
has one owner, the streamer holding its lease, which drives the browser; every other streamer
serves the session's clients through ``RemoteSession`` (requests relayed to the owner, frames
mirrored from the owner's relay channel). Once a second each streamer renews its leases, learns
the fleet's activity for its sessions, checks which of its sessions are mirrored, and adopts
sessions whose owner is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from redis.exceptions import RedisError

from jiomosa import metrics
from jiomosa.browser.driver import BrowserEndpoint, BrowserStartError
from jiomosa.browser.page import BrowserPage, InputError, NavigationError, Viewport
from jiomosa.browsers import BrowserProvider, PooledProvider, make_provider
from jiomosa.egress import EgressProxy
from jiomosa.redis_store import RedisStore
from jiomosa.relay import CLOSED, FRAME, RelayBus, RelayError, decode_frame, encode_frame
from jiomosa.sessions import (
    SESSION_ID_RE,
    AnySession,
    Notifier,
    RemoteSession,
    Session,
    SessionError,
)
from jiomosa.settings import Settings
from jiomosa.store import MemoryStore, SessionRecord, Store
from jiomosa.streaming import Frame, FrameHub
from jiomosa.urlpolicy import UrlPolicy, UrlRejected
from jiomosa.validation import BadRequest

log = logging.getLogger(__name__)

FAILED_RETENTION = 60.0  # seconds a failed session stays visible before it is forgotten
TICK = 1.0  # seconds between lease renewals, reaping and adoption sweeps
MIRROR_LINGER = 5.0  # seconds a mirror without subscribers stays for HTTP pollers
HANDOFF_RETRY = 5.0  # seconds between requests to move one session to this streamer
SEQ_GAP = 1000  # frame numbers skipped at adoption (> frames in a TICK at 60 fps)


class SessionManager:
    """Every session this streamer serves, local or mirrored."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = UrlPolicy.from_allow_list(settings.allow_hosts)
        self.streamer_id = settings.streamer_id or (
            f"{socket.gethostname()}-{secrets.token_hex(3)}")
        self.sessions: dict[str, Session] = {}
        """Sessions this streamer owns (and failed ones it still shows)."""
        self.mirrors: dict[str, FrameHub] = {}
        """Hubs of remote sessions that local clients watch."""
        self.fleet = settings.store == "redis"
        self.redis_store: RedisStore | None = RedisStore(settings.redis_url) if self.fleet else None
        self.store: Store = self.redis_store or MemoryStore()
        self.bus: RelayBus | None = (
            RelayBus(settings.redis_url, self.streamer_id, self._handle_rpc) if self.fleet
            else None)
        self.provider: BrowserProvider = make_provider(settings, lambda: len(self.sessions))
        self.egress: EgressProxy | None = (
            EgressProxy(self.policy) if settings.backend == "local" and settings.egress_proxy
            else None)
        self._closed_notifiers: list[Notifier] = []
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._remote_activity: dict[str, float] = {}
        self._relay_pending: dict[str, Frame] = {}
        self._relay_tasks: dict[str, asyncio.Task[None]] = {}
        self._redis_ok = True
        self._handoff_asked: dict[str, float] = {}

    # =============================================================== life of the manager
    async def start(self) -> None:
        await self._start_store()
        if self.bus is not None:
            await self.bus.start()
        if self.egress is not None and isinstance(self.provider, PooledProvider):
            await self.egress.start()
            self.provider.extra_args = self.egress.chrome_args()
        await self.provider.start()
        self._ticker = asyncio.create_task(self._tick_loop(), name="session-ticker")

    async def _start_store(self) -> None:
        deadline = time.monotonic() + 30.0
        while True:
            try:
                await self.store.start()
                return
            except (RedisError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the session store is not reachable: {exc}") from exc
                log.warning("waiting for the session store: %s", exc)
                await asyncio.sleep(1.0)

    async def shutdown(self) -> None:
        """Graceful end: hand sessions to the fleet if their browsers outlive us, else close."""
        if self.fleet and self.settings.backend != "local":
            await asyncio.gather(*(self._hand_off(s) for s in list(self.sessions.values())),
                                 return_exceptions=True)
        await self.close_all("server shutdown")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(BaseException):
                await self._ticker
        await self.close_all("server shutdown")
        await self.provider.stop()
        if self.egress is not None:
            await self.egress.stop()
        for task in list(self._background) + list(self._relay_tasks.values()):
            task.cancel()
        if self.bus is not None:
            await self.bus.stop()
        await self.store.stop()

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(self.close(s.id, reason) for s in list(self.sessions.values())),
                             return_exceptions=True)

    def on_closed(self, notifier: Notifier) -> None:
        """Call ``notifier(session, reason)`` before a session's subscribers are dropped."""
        self._closed_notifiers.append(notifier)

    # =============================================================== lookups
    async def lookup(self, session_id: Any) -> AnySession:
        """Any session of the fleet."""
        if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
            raise SessionError("Session not found", 404)
        local = self.sessions.get(session_id)
        if local is not None:
            return local
        if self.fleet:
            record = await self._store_call(self.store.get(session_id))
            if record is not None:
                return RemoteSession(self, record)
        served = await self._serve_from_backend(session_id)
        if served is not None:
            return served
        raise SessionError("Session not found", 404)

    async def _serve_from_backend(self, session_id: str) -> Session | None:
        """Serve a browser the backend knows by this name but no streamer serves (a
        BrowserSession made with kubectl): attach to it as a local session."""
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
        if self.live_count() >= self.settings.max_sessions:
            raise SessionError("Too many sessions: the server is at capacity", 503,
                               max_sessions=self.settings.max_sessions)
        session = Session(session_id, viewport, self.settings)
        self.sessions[session_id] = session
        try:
            if not await self._store_call(self.store.add(session.record(self.streamer_id),
                                                         self.settings.lease_ttl)):
                raise SessionError("Session not found", 404)  # another streamer took it
            page = await BrowserPage.attach(lease.endpoint.cdp_url, self.policy, viewport)
        except BaseException as exc:
            if self.sessions.get(session_id) is session:
                del self.sessions[session_id]
            if isinstance(exc, SessionError):
                raise
            await self._forget(session_id)
            if isinstance(exc, Exception):
                session.log.warning("cannot attach to the backend's browser: %s", exc)
                raise SessionError("the browser could not be attached", 503) from None
            raise
        session.lease = lease
        await self._wire(session, page)
        await self._save(session)
        session.log.info("serving the backend's browser %s", session_id)
        return session

    async def summaries(self) -> list[dict[str, Any]]:
        seen = {s.id: s.summary() for s in self.sessions.values()}
        if self.fleet:
            for record in await self._store_call(self.store.all()):
                seen.setdefault(record.session_id, RemoteSession(self, record).summary())
        try:
            for summary in await self.provider.listed():  # e.g. BrowserSessions of kubectl
                seen.setdefault(summary["session_id"], summary)
        except Exception as exc:
            log.warning("cannot list the backend's browsers: %s", exc)
        return list(seen.values())

    def live_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.state in ("starting", "ready"))

    # =============================================================== create / close
    async def create(self, session_id: str | None, viewport: Viewport,
                     url: str | None) -> Session:
        if session_id is None:
            session_id = secrets.token_urlsafe(24)  # 192 random bits
        elif not SESSION_ID_RE.match(session_id):
            raise SessionError(
                "session_id must be 1-128 characters of letters, digits, '_', '-', '.', ':'")
        if url is not None:
            await self.policy.check(url)
        if session_id in self.sessions:
            metrics.SESSION_REJECTED.labels("duplicate").inc()
            raise SessionError("Session already exists", 400, session_id=session_id)
        if self.live_count() >= self.settings.max_sessions:
            metrics.SESSION_REJECTED.labels("capacity").inc()
            raise SessionError("Too many sessions: the server is at capacity", 503,
                               max_sessions=self.settings.max_sessions)
        started = time.perf_counter()
        session = Session(session_id, viewport, self.settings)
        session.owner = self.streamer_id
        self.sessions[session_id] = session  # counts against capacity from now on
        try:
            if not await self._store_call(self.store.add(session.record(self.streamer_id),
                                                         self.settings.lease_ttl)):
                del self.sessions[session_id]
                metrics.SESSION_REJECTED.labels("duplicate").inc()
                raise SessionError("Session already exists", 400, session_id=session_id)
        except BaseException:
            if self.sessions.get(session_id) is session:
                del self.sessions[session_id]
            raise
        try:
            await self._open_browser(session)
            if url:
                session.page_info = await session.require_page().navigate(
                    url, self.settings.navigation_timeout)
            await self._save(session)
        except BaseException as exc:
            await self._discard(session)
            if isinstance(exc, BrowserStartError):
                raise SessionError(str(exc), 503) from None
            raise
        session.touch()  # the idle clock starts when the session is ready, not when asked
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
            session.lease = lease
            await self._wire(session, page)
            return
        session.log.warning("browser attach failed: %s", last_error)
        raise BrowserStartError("the browser could not be attached")

    async def _wire(self, session: Session, page: BrowserPage) -> None:
        session.page = page
        page.log = session.log
        page.set_frame_callback(lambda jpeg, _meta: self._on_frame(session, jpeg))
        page.on_gone(lambda reason: self._on_page_gone(session, reason))
        session.state = "ready"
        await page.start_screencast(self.settings.default_quality)

    async def close(self, session_id: str, reason: str = "closed by client") -> bool:
        session = self.sessions.get(session_id)
        if session is None:
            if self.fleet:
                remote = await self.lookup(session_id)
                assert isinstance(remote, RemoteSession)
                await self.call_owner(remote, "close", {"reason": reason})
                return True
            return False
        if session.state == "failed":
            self.sessions.pop(session_id, None)
            await self._forget(session_id)
            return True
        if session.state in ("closing", "closed"):
            return True
        session.state = "closing"
        session.log.info("closing session: %s", reason)
        await self._notify_closed(session, reason)
        await self._discard(session)
        metrics.SESSIONS_CLOSED.labels(_reason_label(reason)).inc()
        return True

    async def _notify_closed(self, session: AnySession, reason: str) -> None:
        for notifier in self._closed_notifiers:
            try:
                await notifier(session, reason)
            except Exception:
                log.exception("close notifier failed")
        if self.bus is not None and not session.remote:
            with contextlib.suppress(RedisError, OSError):
                await self.bus.publish(session.id, CLOSED + reason.encode())

    async def _discard(self, session: Session) -> None:
        session.state = "closed"
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        # Out of the registry first: nobody may adopt a session whose browser is quitting.
        await self._forget(session.id)
        await session.hub.close()
        await self._release(session, quit_browser=True)
        self.provider.request_refill()

    async def _forget(self, session_id: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.store.remove(session_id)

    async def _release(self, session: Session, quit_browser: bool) -> None:
        page, lease = session.page, session.lease
        session.page = session.lease = None
        if page is not None:
            metrics.BLOCKED_REQUESTS.inc(page.blocked_requests)
            with contextlib.suppress(Exception):
                await page.close()
        if lease is not None and quit_browser:
            with contextlib.suppress(Exception):
                await lease.release()

    async def _hand_off(self, session: Session) -> None:
        """Give a session to the fleet: detach (the browser lives on), drop the lease."""
        if session.state != "ready":
            return
        session.state = "closed"
        self.sessions.pop(session.id, None)
        await self._release(session, quit_browser=False)
        await session.hub.close()
        with contextlib.suppress(RedisError, OSError):
            await self.store.release(session.id, self.streamer_id)
        session.log.info("session handed off to the fleet")

    async def _give_to(self, session: Session, streamer_id: str) -> bool:
        """Hand a session to the streamer its clients are on, if none watches it here.

        The ingress hashes a session's clients to one streamer, but the session was created
        wherever its create request landed; moving it makes the clients' streamer the owner
        and their frames free of Redis."""
        endpoint = session.lease.endpoint if session.lease else None
        if (endpoint is None or endpoint.kind == "local" or session.state != "ready"
                or session.hub.subscribers
                or time.monotonic() - session.hub.last_used < MIRROR_LINGER):
            return False
        session.log.info("handing the session to %s, where its clients are", streamer_id)
        await self._hand_off(session)
        return True

    async def _follow_clients(self, store: RedisStore) -> None:
        """Ask owners to hand over the remote sessions whose clients are all here."""
        assert self.bus is not None
        now = time.monotonic()
        for session_id, hub in list(self.mirrors.items()):
            if not hub.subscribers or self._handoff_asked.get(session_id, 0) > now:
                continue
            self._handoff_asked[session_id] = now + HANDOFF_RETRY
            record = await store.get(session_id)
            if record is None or record.endpoint.get("kind") == "local":
                continue
            try:
                answer = await self.bus.call(record.owner, "handoff", session_id,
                                             {"to": self.streamer_id}, timeout=5.0)
            except RelayError:
                continue
            if answer.get("moved") and await store.try_acquire(
                    session_id, self.streamer_id, self.settings.lease_ttl):
                await self._adopt(record)

    # =============================================================== failures
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
        await self._release(session, quit_browser=True)
        await self._save(session)
        metrics.SESSIONS_CLOSED.labels("failed").inc()
        # Keep the failed session visible for a while so that clients learn what happened.
        await asyncio.sleep(FAILED_RETENTION)
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            await self._forget(session.id)

    # =============================================================== frames
    def _on_frame(self, session: Session, jpeg: bytes) -> None:
        frame = session.hub.publish(jpeg)
        if frame is None:
            return
        if session.page is not None:
            session.page.last_frame_size = (frame.width, frame.height)
        if session.relay_active and self.bus is not None:
            self._relay(session.id, frame)

    def _relay(self, session_id: str, frame: Frame) -> None:
        """Publish to the session's relay channel, latest-frame-wins: a slow Redis skips frames
        instead of queueing them."""
        self._relay_pending[session_id] = frame
        if session_id not in self._relay_tasks:
            task = asyncio.create_task(self._relay_loop(session_id), name=f"relay-{session_id}")
            self._relay_tasks[session_id] = task

    async def _relay_loop(self, session_id: str) -> None:
        try:
            while (frame := self._relay_pending.pop(session_id, None)) is not None:
                assert self.bus is not None
                with contextlib.suppress(RedisError, OSError):
                    await self.bus.publish(session_id, encode_frame(frame))
        finally:
            self._relay_tasks.pop(session_id, None)

    def mirror_hub(self, session_id: str) -> FrameHub:
        """The local hub of a remote session, fed from its relay channel (or, once this
        streamer took the session over, the session's own hub)."""
        local = self.sessions.get(session_id)
        if local is not None:
            return local.hub
        hub = self.mirrors.get(session_id)
        if hub is None:
            hub = FrameHub(session_id, self.settings.default_quality)
            self.mirrors[session_id] = hub
            self._spawn(self._watch(session_id, hub), f"watch-{session_id}")
        return hub

    async def _watch(self, session_id: str, hub: FrameHub) -> None:
        assert self.bus is not None

        def on_message(data: bytes) -> None:
            if data[:1] == FRAME:
                seq, width, height, quality, timestamp, jpeg = decode_frame(data)
                hub.publish_frame(Frame(seq, jpeg, width, height, quality, timestamp))
            elif data[:1] == CLOSED:
                self._spawn(self._mirror_closed(session_id, data[1:].decode(errors="replace")),
                            f"mirror-closed-{session_id}")

        await self.bus.watch(session_id, on_message)
        await self._ask_snapshot(session_id)

    async def _ask_snapshot(self, session_id: str) -> None:
        """Ask the owner to publish its current picture (a new subscriber gets it at once)."""
        assert self.bus is not None
        with contextlib.suppress(RedisError, OSError, RelayError):
            record = await self.store.get(session_id)
            if record is not None:
                await self.bus.call(record.owner, "snapshot", session_id, timeout=3.0)

    async def _mirror_closed(self, session_id: str, reason: str) -> None:
        hub = self.mirrors.get(session_id)
        if hub is None:
            return
        record = SessionRecord(session_id, 0.0, 0.0, "", state="closed")
        await self._notify_closed(RemoteSession(self, record), reason)
        await self._drop_mirror(session_id)

    async def _drop_mirror(self, session_id: str) -> None:
        hub = self.mirrors.pop(session_id, None)
        if hub is not None:
            await hub.close()
        if self.bus is not None:
            await self.bus.unwatch(session_id)

    def note_remote_activity(self, session_id: str) -> None:
        self._remote_activity[session_id] = time.time()

    # =============================================================== relay requests
    async def call_owner(self, session: RemoteSession, op: str, args: dict[str, Any],
                         timeout: float = 10.0) -> dict[str, Any]:
        """Run ``op`` where the session is driven. Ownership may have moved since the caller
        looked the session up (even to this streamer): follow it once."""
        assert self.bus is not None
        for attempt in range(2):
            if session.id in self.sessions:
                return await self._handle_rpc(op, session.id, args)
            try:
                return await self.bus.call(session.owner, op, session.id, args, timeout)
            except RelayError as exc:
                record = await self.store.get(session.id) if attempt == 0 else None
                if record is None or record.owner == session.owner:
                    raise SessionError(str(exc), exc.status) from None
                session.record = record
        raise AssertionError("unreachable")

    async def _handle_rpc(self, op: str, session_id: str, args: dict[str, Any]
                          ) -> dict[str, Any]:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionError("this streamer does not own the session", 409)
        try:
            if op == "input":
                return await session.input(str(args.get("kind")), args.get("payload"))
            if op == "load":
                return await session.load(str(args.get("url")), float(args.get("timeout", 20)))
            if op == "close":
                await self.close(session_id, str(args.get("reason", "closed by client")))
                return {}
            if op == "snapshot":
                session.relay_active = True
                if session.hub.latest is not None:
                    self._relay(session_id, session.hub.latest)
                return {}
            if op == "handoff":
                return {"moved": await self._give_to(session, str(args.get("to")))}
            if op == "info":
                return await session.info()
            if op == "quality":
                await session.set_source_quality(int(args.get("quality", 80)))
                return {}
        except (BadRequest, InputError, UrlRejected) as exc:
            raise SessionError(str(exc), 400) from None
        except NavigationError as exc:
            raise SessionError(str(exc), 502) from None
        raise SessionError(f"unknown request {op!r}", 400)

    # =============================================================== the tick
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self._reap()
                if self.fleet:
                    await self._fleet_tick()
                    if not self._redis_ok:
                        log.info("session store reachable again")
                    self._redis_ok = True
            except (RedisError, OSError) as exc:
                if self._redis_ok:
                    log.warning("session store unreachable (%s); serving local sessions", exc)
                self._redis_ok = False
            except Exception:
                log.exception("session tick failed")

    def _reap(self) -> None:
        now = time.time()
        for session in list(self.sessions.values()):
            if session.state != "ready":
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
                self._spawn(self.close(session.id, reason), f"reap-{session.id}")

    async def _fleet_tick(self) -> None:
        store = self.redis_store
        assert store is not None and self.bus is not None
        # Starting sessions too: a slow browser start must not let the lease lapse.
        mine = [s for s in self.sessions.values() if s.state in ("starting", "ready")]
        # 1. Renew leases (re-registering what a restarted Redis lost).
        lost = await store.renew([s.record(self.streamer_id) for s in mine],
                                 self.streamer_id, self.settings.lease_ttl)
        for session_id in lost:
            session = self.sessions.get(session_id)
            if session is not None:
                session.log.warning("lease taken by another streamer; letting go")
                await self._notify_closed(session, "moved")
                await self._hand_off(session)
        # 2. Activity seen by other streamers keeps our sessions alive.
        for session_id, when in (await store.activity([s.id for s in mine])).items():
            session = self.sessions.get(session_id)
            if session is not None and when > session.last_activity:
                session.last_activity = when
        # 3. Relay only the sessions that some replica listens to.
        counts = await self.bus.listeners([s.id for s in mine])
        for session in mine:
            session.relay_active = counts.get(session.id, 0) > 0
        # 4. Mirrors: keep watched ones alive at the owner, drop unwatched ones.
        for session_id, hub in list(self.mirrors.items()):
            if hub.subscribers or time.monotonic() - hub.last_used < MIRROR_LINGER:
                self._remote_activity[session_id] = time.time()
            elif not hub.closed:
                await self._drop_mirror(session_id)
        pending, self._remote_activity = self._remote_activity, {}
        for session_id, when in pending.items():
            await store.touch(session_id, when)
        # 5. Adopt sessions whose owner is gone.
        await self._adopt_orphans(store)
        # 6. Take over sessions whose clients are all on this streamer.
        await self._follow_clients(store)

    async def _adopt_orphans(self, store: RedisStore) -> None:
        records = [r for r in await store.all()
                   if r.session_id not in self.sessions and r.state == "ready"]
        if not records:
            return
        owners = await store.lease_owners([r.session_id for r in records])
        for record in records:
            if owners.get(record.session_id) is not None:
                continue
            if self.live_count() >= self.settings.max_sessions:
                return
            if await store.try_acquire(record.session_id, self.streamer_id,
                                       self.settings.lease_ttl):
                await self._adopt(record)

    async def _adopt(self, record: SessionRecord) -> None:
        endpoint = BrowserEndpoint.from_dict(record.endpoint)
        # Frames the old owner sent after its last renewal (at most a second's worth) must not
        # reuse numbers: continue well above the last one it reported.
        session = Session(record.session_id, Viewport.from_dict(record.viewport), self.settings,
                          created_at=record.created_at, first_seq=record.seq + SEQ_GAP,
                          hub=self.mirrors.get(record.session_id))
        session.page_info = record.page_info
        session.last_activity = record.last_activity
        session.owner = self.streamer_id
        try:
            page = await BrowserPage.attach(endpoint.cdp_url, self.policy, session.viewport)
        except Exception as exc:
            session.log.warning("cannot re-attach to the browser of %s (%s); closing it",
                                record.owner, exc)
            with contextlib.suppress(RedisError, OSError):
                await self.bus.publish(record.session_id, CLOSED + b"failed")  # type: ignore[union-attr]
            await self.provider.lease_for(endpoint).release()
            await self._forget(record.session_id)
            return
        self.sessions[session.id] = session
        if self.mirrors.pop(session.id, None) is not None and self.bus is not None:
            await self.bus.unwatch(session.id)  # the mirror's clients now watch the real hub
        session.lease = self.provider.lease_for(endpoint)
        session.relay_active = True  # mirrors of the old owner are waiting
        await self._wire(session, page)
        await self._save(session)
        session.log.info("adopted session from %s", record.owner)

    # =============================================================== helpers
    async def _save(self, session: Session) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.store.save(session.record(self.streamer_id))

    async def _store_call(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError):
            raise SessionError("the session registry is not reachable", 503) from None

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def live_metrics(self) -> Iterable[tuple[str, dict[str, Any]]]:
        for session in list(self.sessions.values()):
            yield "session", {"state_name": session.state}
        for hub in [s.hub for s in self.sessions.values()] + list(self.mirrors.values()):
            for sub in list(hub.subscribers.values()):
                yield "client", {"transport_name": sub.transport.name,
                                 "actual_fps": sub.actual_fps, "fps": sub.fps}


def _reason_label(reason: str) -> str:
    for label in ("idle", "duration", "shutdown", "client"):
        if label in reason:
            return label
    return "other"
