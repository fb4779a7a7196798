"""A fleet of streamers sharing sessions (``JIOMOSA_STORE=redis``), plugged into the session
manager from outside the way python-socketio's ``AsyncPubSubManager`` extends ``AsyncManager``.

Each session has one owner, the streamer holding its lease, which drives the browser; every
other streamer serves the session's clients through ``RemoteSession`` (requests relayed to the
owner, frames mirrored from the owner's relay channel, ``mirrors.py``). Once a second each
streamer renews its leases, learns the fleet's activity for its sessions, checks which of its
sessions are mirrored, adopts sessions whose owner is gone and asks for the sessions whose
clients are all here. docs/architecture.md tells the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from redis.exceptions import RedisError

from jiomosa.core.errors import SessionError
from jiomosa.core.settings import Settings
from jiomosa.core.types import BrowserEndpoint, SessionState, Viewport
from jiomosa.core.urlpolicy import UrlPolicy
from jiomosa.fleet.mirrors import Mirrors
from jiomosa.fleet.relay import CLOSED, Bus, RelayError
from jiomosa.fleet.remote import RemoteSession
from jiomosa.fleet.store import SessionRecord, Store
from jiomosa.frames.hub import FrameHub
from jiomosa.providers.base import BrowserProvider
from jiomosa.sessions.manager import PageAttacher, SessionManager
from jiomosa.sessions.session import LocalSession, Session, Share

log = logging.getLogger(__name__)

HANDOFF_RETRY = 5.0  # seconds between requests to move one session to this streamer
SEQ_GAP = 1000  # frame numbers skipped at adoption (> frames in a tick at 60 fps)
STORE_ERRORS = (RedisError, OSError)


def record_of(session: LocalSession, owner: str) -> SessionRecord:
    """A local session as the fleet's registry keeps it."""
    hub = session.hub
    return SessionRecord(
        session_id=session.id, created_at=session.created_at,
        last_activity=session.last_activity, owner=owner,
        endpoint=session.lease.endpoint.to_dict() if session.lease else {},
        viewport=session.viewport.to_dict(), page_info=session.page_info,
        state=str(session.state), error=session.error or "",
        seq=hub.latest.seq if hub.latest else 0,
        shares={token: share.to_dict() for token, share in session.shares.items()})


class FleetManager(SessionManager):
    """The session manager of one streamer in a fleet."""

    def __init__(self, settings: Settings, provider: BrowserProvider, policy: UrlPolicy,
                 attach: PageAttacher, store: Store, bus: Bus, streamer_id: str) -> None:
        super().__init__(settings, provider, policy, attach, streamer_id)
        self.store = store
        self.bus = bus
        self.mirrors = Mirrors(bus, store, settings.default_quality, self._mirror_closed)
        self._remote_activity: dict[str, float] = {}
        self._handoff_asked: dict[str, float] = {}
        self._store_ok = True

    # =============================================================== life
    async def start(self) -> None:
        deadline = time.monotonic() + 30.0
        while True:
            try:
                await self.store.start()
                break
            except STORE_ERRORS as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the session store is not reachable: {exc}") from exc
                log.warning("waiting for the session store: %s", exc)
                await asyncio.sleep(1.0)
        await self.bus.start(self._handle_rpc)
        self.on_closed(self._tell_fleet_closed)
        await super().start()

    async def shutdown(self) -> None:
        """Hand sessions to the fleet if their browsers outlive us, else close them."""
        if self.settings.backend != "local":
            await asyncio.gather(*(self._hand_off(s) for s in list(self.sessions.values())),
                                 return_exceptions=True)
        await super().shutdown()

    async def stop(self) -> None:
        await super().stop()
        await self.mirrors.stop()
        await self.bus.stop()
        await self.store.stop()

    # =============================================================== registry hooks
    async def _claim(self, session: LocalSession) -> bool:
        return bool(await self._store_call(self.store.add(
            record_of(session, self.streamer_id), self.settings.lease_ttl)))

    async def _saved(self, session: LocalSession) -> None:
        with contextlib.suppress(*STORE_ERRORS):
            await self.store.save(record_of(session, self.streamer_id))

    async def _forgotten(self, session_id: str) -> None:
        self.mirrors.stop_relay(session_id)
        with contextlib.suppress(*STORE_ERRORS):
            await self.store.remove(session_id)

    async def _find_elsewhere(self, session_id: str) -> Session | None:
        record = await self._store_call(self.store.get(session_id))
        return RemoteSession(self, record) if record is not None else None

    async def _list_elsewhere(self) -> list[dict[str, Any]]:
        records = await self._store_call(self.store.all())
        return [RemoteSession(self, r).summary() for r in records]

    async def _find_share_elsewhere(self, token: str) -> Session | None:
        # A scan of the registry: share links are opened rarely (a subscribe, a poll), and
        # a fleet holds at most its streamers' capacity of sessions.
        for record in await self._store_call(self.store.all()):
            if token in record.shares:
                return RemoteSession(self, record)
        return None

    async def _close_elsewhere(self, session_id: str, reason: str) -> bool:
        remote = await self.lookup(session_id)
        if not isinstance(remote, RemoteSession):  # adopted meanwhile
            return await self.close(session_id, reason)
        await self.call_owner(remote, "close", {"reason": reason})
        return True

    async def _tell_fleet_closed(self, session: Session, reason: str) -> None:
        if isinstance(session, LocalSession):
            with contextlib.suppress(*STORE_ERRORS):
                await self.bus.publish(session.id, CLOSED + reason.encode())

    async def _mirror_closed(self, session_id: str, reason: str) -> None:
        closed = SessionRecord(session_id, 0.0, 0.0, "", state=str(SessionState.CLOSED))
        await self.notify_closed(RemoteSession(self, closed), reason)

    def hubs(self) -> Iterable[FrameHub]:
        return [*super().hubs(), *self.mirrors.hubs()]

    # =============================================================== what RemoteSession uses
    def mirror_hub(self, session_id: str) -> FrameHub:
        local = self.sessions.get(session_id)
        return local.hub if local is not None else self.mirrors.hub(session_id)

    def existing_mirror(self, session_id: str) -> FrameHub | None:
        return self.mirrors.existing(session_id)

    def note_remote_activity(self, session_id: str) -> None:
        self._remote_activity[session_id] = time.time()

    async def touch_registry(self, session_id: str, when: float) -> None:
        await self._store_call(self.store.touch(session_id, when))

    async def call_owner(self, session: RemoteSession, op: str, args: dict[str, Any],
                         timeout: float = 10.0) -> dict[str, Any]:
        """Run ``op`` where the session is driven. Ownership may have moved since the caller
        looked the session up (even to this streamer): follow it once."""
        for attempt in range(2):
            if session.id in self.sessions:
                return await self._handle_rpc(op, session.id, args)
            try:
                return await self.bus.call(session.owner, op, session.id, args, timeout)
            except RelayError:
                record = await self.store.get(session.id) if attempt == 0 else None
                if record is None or record.owner == session.owner:
                    raise
                session.record = record
        raise AssertionError("unreachable")

    # =============================================================== requests from the fleet
    async def _handle_rpc(self, op: str, session_id: str, args: dict[str, Any]
                          ) -> dict[str, Any]:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionError("this streamer does not own the session", 409)
        if op == "input":
            via = args.get("share")
            return await session.input(str(args.get("kind")), args.get("payload"),
                                       via=via if isinstance(via, str) else None)
        if op == "share":
            share = await self.share(session, bool(args.get("input")))
            return {"token": share.token, **share.to_dict()}
        if op == "unshare":
            gone = await self.unshare(session, str(args.get("key")))
            return {"token": gone.token, **gone.to_dict()}
        if op == "load":
            return await session.load(str(args.get("url")), float(args.get("timeout", 20)))
        if op == "close":
            await self.close(session_id, str(args.get("reason", "closed by client")))
            return {}
        if op == "snapshot":
            self.mirrors.relay(session)
            return {}
        if op == "handoff":
            return {"moved": await self._give_to(session, str(args.get("to")))}
        if op == "info":
            return await session.info()
        if op == "quality":
            await session.set_source_quality(int(args.get("quality", 80)))
            return {}
        raise SessionError(f"unknown request {op!r}", 400)

    # =============================================================== the tick
    async def _tick(self) -> None:
        await super()._tick()
        try:
            await self._fleet_tick()
        except STORE_ERRORS as exc:
            if self._store_ok:
                log.warning("session store unreachable (%s); serving local sessions", exc)
            self._store_ok = False
            return
        if not self._store_ok:
            log.info("session store reachable again")
        self._store_ok = True

    async def _fleet_tick(self) -> None:
        # Starting sessions too: a slow browser start must not let the lease lapse.
        mine = [s for s in self.sessions.values() if s.state.live]
        # 1. Renew leases (re-registering what a restarted Redis lost).
        lost = await self.store.renew([record_of(s, self.streamer_id) for s in mine],
                                      self.streamer_id, self.settings.lease_ttl)
        for session_id in lost:
            session = self.sessions.get(session_id)
            if session is not None:
                session.log.warning("lease taken by another streamer; letting go")
                await self.notify_closed(session, "moved")
                await self._hand_off(session)
        # 2. Activity seen by other streamers keeps our sessions alive.
        for session_id, when in (await self.store.activity([s.id for s in mine])).items():
            session = self.sessions.get(session_id)
            if session is not None and when > session.last_activity:
                session.last_activity = when
        # 3. Relay only the sessions that some replica listens to.
        counts = await self.bus.listeners([s.id for s in mine])
        for session in mine:
            if counts.get(session.id, 0) > 0:
                self.mirrors.relay(session, snapshot=False)
            else:
                self.mirrors.stop_relay(session.id)
        # 4. Mirrors: keep watched ones alive at the owner, drop unwatched ones.
        for session_id in await self.mirrors.sweep():
            self._remote_activity[session_id] = time.time()
        await self._recheck_shares()
        pending, self._remote_activity = self._remote_activity, {}
        for session_id, when in pending.items():
            await self.store.touch(session_id, when)
        # 5. Adopt sessions whose owner is gone.
        await self._adopt_orphans()
        # 6. Take over sessions whose clients are all on this streamer.
        await self._follow_clients()

    async def _recheck_shares(self) -> None:
        """Share links revoked on another streamer: the viewers of the sessions mirrored here
        learn it from the registry within a tick (the owner's own viewers at once)."""
        for session_id in self.mirrors.watched():
            record = await self.store.get(session_id)
            if record is not None:
                await self.notify_unshared(RemoteSession(self, record))

    # =============================================================== moving sessions
    async def _adopt_orphans(self) -> None:
        """Take the ready sessions whose owner is gone; forget the ones it was starting (an
        owner renews the leases of its starting sessions: no lease, no owner) or restarting
        the crashed browser of (the record names no browser to re-attach to)."""
        records = [r for r in await self.store.all()
                   if r.session_id not in self.sessions
                   and r.state in (SessionState.READY, SessionState.STARTING,
                                   SessionState.RECOVERING)]
        if not records:
            return
        owners = await self.store.lease_owners([r.session_id for r in records])
        for record in records:
            if owners.get(record.session_id) is not None:
                continue
            starting = record.state == SessionState.STARTING
            recovering = record.state == SessionState.RECOVERING
            if not (starting or recovering) and self.live_count() >= self.settings.max_sessions:
                continue
            if not await self.store.try_acquire(record.session_id, self.streamer_id,
                                                self.settings.lease_ttl):
                continue
            if starting:
                log.info("forgetting session %s: its owner died while starting it",
                         record.session_id)
                await self._forgotten(record.session_id)
            elif recovering:
                log.info("ending session %s: its owner died while restarting its browser",
                         record.session_id)
                with contextlib.suppress(*STORE_ERRORS):
                    await self.bus.publish(record.session_id, CLOSED + b"failed")
                await self._forgotten(record.session_id)
            else:
                await self._adopt(record)

    async def _adopt(self, record: SessionRecord, seq_gap: int = SEQ_GAP) -> None:
        """Drive a session another streamer drove. ``seq_gap``: after a failover, frames the
        old owner sent after its last renewal (at most a second's worth) must not reuse
        numbers, so numbering continues well above the last one it reported; a hand-off
        (the owner stopped first) continues right after it."""
        endpoint = BrowserEndpoint.from_dict(record.endpoint)
        session = LocalSession(record.session_id, Viewport.from_dict(record.viewport),
                               self.settings, created_at=record.created_at,
                               hub=self.mirrors.existing(record.session_id),
                               owner=self.streamer_id)
        session.hub.continue_above(record.seq + seq_gap)
        session.page_info = record.page_info
        session.last_activity = record.last_activity
        session.restore_shares({t: Share.from_dict(t, d) for t, d in record.shares.items()})
        try:
            page = await self._attach(endpoint, self.policy, session.viewport)
        except Exception as exc:
            session.log.warning("cannot re-attach to the browser of %s (%s); closing it",
                                record.owner, exc)
            with contextlib.suppress(*STORE_ERRORS):
                await self.bus.publish(record.session_id, CLOSED + b"failed")
            await self.provider.lease_for(endpoint).release()
            await self._forgotten(record.session_id)
            return
        self.sessions[session.id] = session
        await self.mirrors.promote(session.id)  # its clients now watch the real hub
        await self.wire(session, page, self.provider.lease_for(endpoint))
        self.mirrors.relay(session, snapshot=False)  # mirrors of the old owner are waiting
        await self._saved(session)
        session.log.info("adopted session from %s", record.owner)

    async def _hand_off(self, session: LocalSession) -> None:
        """Give a session to the fleet: detach (the browser lives on), drop the lease."""
        if session.state != SessionState.READY:
            return
        session.state = SessionState.CLOSED
        self._drop(session)
        self.mirrors.stop_relay(session.id)
        await self.release(session, quit_browser=False)
        await session.hub.close()
        with contextlib.suppress(*STORE_ERRORS):
            await self.store.release(session.id, self.streamer_id)
        session.log.info("session handed off to the fleet")

    async def _give_to(self, session: LocalSession, streamer_id: str) -> bool:
        """Hand a session to the streamer its clients are on, if none watches it here.

        The ingress hashes a session's clients to one streamer, but the session was created
        wherever its create request landed; moving it makes the clients' streamer the owner
        and their frames free of Redis."""
        endpoint = session.lease.endpoint if session.lease else None
        if (endpoint is None or endpoint.kind == "local" or session.state != SessionState.READY
                or self.mirrors.in_use(session.hub)):
            return False
        session.log.info("handing the session to %s, where its clients are", streamer_id)
        await self._hand_off(session)
        return True

    async def _follow_clients(self) -> None:
        """Ask owners to hand over the remote sessions whose clients are all here."""
        now = time.monotonic()
        for session_id in self.mirrors.watched():
            if self._handoff_asked.get(session_id, 0) > now:
                continue
            self._handoff_asked[session_id] = now + HANDOFF_RETRY
            record = await self.store.get(session_id)
            if record is None or record.endpoint.get("kind") == "local":
                continue
            try:
                answer = await self.bus.call(record.owner, "handoff", session_id,
                                             {"to": self.streamer_id}, timeout=5.0)
            except RelayError:
                continue
            if answer.get("moved") and await self.store.try_acquire(
                    session_id, self.streamer_id, self.settings.lease_ttl):
                await self._adopt(record, seq_gap=1)

    # =============================================================== helpers
    async def _store_call(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except STORE_ERRORS:
            raise SessionError("the session registry is not reachable", 503) from None

