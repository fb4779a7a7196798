"""The fleet's session registry: its record type, the ``Store`` protocol, and an in-process store.

The registry holds what any streamer needs to serve a session: its browser endpoint, viewport,
page, activity and which streamer owns it. Ownership is a lease: a key with a TTL that only the
owner renews. Frames and input never go through the registry; see ``relay.py`` and ``mirrors.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol


@dataclass
class SessionRecord:
    """A session as the fleet knows it (plain data, JSON in Redis)."""

    session_id: str
    created_at: float
    last_activity: float
    owner: str
    """Id of the streamer that holds the session's lease."""
    endpoint: dict[str, str] = field(default_factory=dict)
    """``BrowserEndpoint.to_dict()``: how to attach to or quit the browser."""
    viewport: dict[str, Any] = field(default_factory=dict)
    page_info: dict[str, Any] = field(default_factory=dict)
    state: str = "starting"
    error: str = ""
    seq: int = 0
    """The owner's latest frame number (refreshed once a second): a new owner continues
    above it so that mirrors and pollers see numbers only grow."""
    shares: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The session's live share links, token → ``Share.to_dict()``: any streamer can open a
    share link's view, and a new owner keeps them."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> SessionRecord:
        data = json.loads(raw)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Store(Protocol):
    """Session registry and ownership leases."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def add(self, record: SessionRecord, lease_ttl: float) -> bool:
        """Register a new session owned by ``record.owner``; False if the id exists."""
        ...

    async def save(self, record: SessionRecord) -> None: ...

    async def get(self, session_id: str) -> SessionRecord | None: ...

    async def all(self) -> list[SessionRecord]: ...

    async def remove(self, session_id: str) -> None: ...

    async def touch(self, session_id: str, when: float) -> None:
        """Record activity seen by any streamer (never moves ``last_activity`` back)."""
        ...

    async def renew(self, records: list[SessionRecord], owner: str, ttl: float) -> list[str]:
        """Extend ``owner``'s leases (re-registering records Redis lost); return the ids whose
        lease another streamer holds now."""
        ...

    async def try_acquire(self, session_id: str, owner: str, ttl: float) -> bool:
        """Take an expired (missing) lease."""
        ...

    async def release(self, session_id: str, owner: str) -> None:
        """Give up a lease (hand-off) if ``owner`` still holds it."""
        ...

    async def lease_owner(self, session_id: str) -> str | None: ...

    async def lease_owners(self, session_ids: list[str]) -> dict[str, str | None]: ...

    async def activity(self, session_ids: list[str]) -> dict[str, float]:
        """Last activity of each session as the fleet saw it."""
        ...


class MemoryStore:
    """The registry in this process: for tests of the fleet's logic without Redis (several
    coordinators may share one), and the reference for ``RedisStore``'s semantics. Like
    Redis it keeps records as JSON (callers get copies) and activity apart from the record,
    only ever moving forward."""

    def __init__(self) -> None:
        self._records: dict[str, str] = {}
        self._activity: dict[str, float] = {}
        self._leases: dict[str, tuple[str, float]] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _raise_activity(self, session_id: str, when: float) -> None:
        if when > self._activity.get(session_id, 0.0):
            self._activity[session_id] = when

    def _read(self, session_id: str) -> SessionRecord | None:
        raw = self._records.get(session_id)
        if raw is None:
            return None
        record = SessionRecord.from_json(raw)
        record.last_activity = max(record.last_activity, self._activity.get(session_id, 0.0))
        return record

    async def add(self, record: SessionRecord, lease_ttl: float) -> bool:
        if record.session_id in self._records:
            return False
        self._records[record.session_id] = record.to_json()
        self._activity[record.session_id] = record.last_activity
        self._leases[record.session_id] = (record.owner, time.monotonic() + lease_ttl)
        return True

    async def save(self, record: SessionRecord) -> None:
        if record.session_id in self._records:  # a removed session is not brought back
            self._records[record.session_id] = record.to_json()

    async def get(self, session_id: str) -> SessionRecord | None:
        return self._read(session_id)

    async def all(self) -> list[SessionRecord]:
        return [r for i in sorted(self._records) if (r := self._read(i)) is not None]

    async def remove(self, session_id: str) -> None:
        self._records.pop(session_id, None)
        self._activity.pop(session_id, None)
        self._leases.pop(session_id, None)

    async def touch(self, session_id: str, when: float) -> None:
        if session_id in self._records:
            self._raise_activity(session_id, when)

    async def renew(self, records: list[SessionRecord], owner: str, ttl: float) -> list[str]:
        now = time.monotonic()
        lost = []
        for record in records:
            holder = self._leases.get(record.session_id)
            if holder is not None and holder[0] != owner and holder[1] > now:
                lost.append(record.session_id)
                continue
            self._records[record.session_id] = record.to_json()
            self._raise_activity(record.session_id, record.last_activity)
            self._leases[record.session_id] = (owner, now + ttl)
        return lost

    async def try_acquire(self, session_id: str, owner: str, ttl: float) -> bool:
        holder = self._leases.get(session_id)
        if holder is not None and holder[1] > time.monotonic():
            return holder[0] == owner
        self._leases[session_id] = (owner, time.monotonic() + ttl)
        return True

    async def release(self, session_id: str, owner: str) -> None:
        holder = self._leases.get(session_id)
        if holder is not None and holder[0] == owner:
            del self._leases[session_id]

    async def lease_owner(self, session_id: str) -> str | None:
        holder = self._leases.get(session_id)
        if holder is None or holder[1] <= time.monotonic():
            return None
        return holder[0]

    async def lease_owners(self, session_ids: list[str]) -> dict[str, str | None]:
        return {i: await self.lease_owner(i) for i in session_ids}

    async def activity(self, session_ids: list[str]) -> dict[str, float]:
        return {i: self._activity[i] for i in session_ids if i in self._activity}
