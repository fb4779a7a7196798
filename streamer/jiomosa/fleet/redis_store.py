"""The session registry and leases in Redis (``JIOMOSA_STORE=redis``).

Keys (prefix ``jiomosa:``): ``s:{id}`` the record as JSON, ``act:{id}`` the last activity any
streamer saw, ``lease:{id}`` the owner's id with a TTL, ``ids`` the set of session ids.
Every multi-key change is one Lua script, so two streamers never half-own a session.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from jiomosa.fleet.store import SessionRecord

PREFIX = "jiomosa:"

_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[4])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[4], ARGV[5])
return 1
"""

# Renew one lease and refresh the record (page, frame seq). After a Redis restart the registry
# is empty: this puts the owner's sessions back (record, activity, lease).
_RENEW = """
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[5])
local act = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[4]) > act then redis.call('SET', KEYS[2], ARGV[4]) end
return 1
"""

_TOUCH = """
local act = tonumber(redis.call('GET', KEYS[1]) or '0')
if redis.call('EXISTS', KEYS[2]) == 1 and tonumber(ARGV[1]) > act then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _keys(session_id: str) -> list[str]:
    return [f"{PREFIX}s:{session_id}", f"{PREFIX}act:{session_id}",
            f"{PREFIX}lease:{session_id}", f"{PREFIX}ids"]


class RedisStore:
    """Registry and leases shared by every streamer of a fleet."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis: aioredis.Redis = aioredis.from_url(
            url, socket_timeout=5.0, socket_connect_timeout=3.0, health_check_interval=10)
        self._add = self.redis.register_script(_ADD)
        self._renew = self.redis.register_script(_RENEW)
        self._touch = self.redis.register_script(_TOUCH)
        self._release = self.redis.register_script(_RELEASE)

    async def start(self) -> None:
        await self.redis.ping()

    async def stop(self) -> None:
        await self.redis.aclose()

    async def add(self, record: SessionRecord, lease_ttl: float) -> bool:
        keys = _keys(record.session_id)
        added = await self._add(keys=keys, args=[
            record.to_json(), record.owner, int(lease_ttl * 1000), repr(record.last_activity),
            record.session_id])
        return bool(added)

    async def save(self, record: SessionRecord) -> None:
        # XX: a session removed meanwhile is not brought back by a late save.
        await self.redis.set(_keys(record.session_id)[0], record.to_json(), xx=True)

    async def get(self, session_id: str) -> SessionRecord | None:
        raw, act = await self.redis.mget(_keys(session_id)[:2])
        return _record(raw, act)

    async def all(self) -> list[SessionRecord]:
        ids = sorted(_text(i) for i in await self.redis.smembers(f"{PREFIX}ids"))
        if not ids:
            return []
        keys = [k for i in ids for k in _keys(i)[:2]]
        values = await self.redis.mget(keys)
        out = []
        for n, session_id in enumerate(ids):
            record = _record(values[2 * n], values[2 * n + 1])
            if record is None:
                await self.redis.srem(f"{PREFIX}ids", session_id)
            else:
                out.append(record)
        return out

    async def remove(self, session_id: str) -> None:
        keys = _keys(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys[:3])
            pipe.srem(keys[3], session_id)
            await pipe.execute()

    async def touch(self, session_id: str, when: float) -> None:
        keys = _keys(session_id)
        await self._touch(keys=[keys[1], keys[0]], args=[repr(when)])

    async def renew(self, records: list[SessionRecord], owner: str, ttl: float) -> list[str]:
        if not records:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in records:
                await self._renew(keys=_keys(record.session_id), args=[
                    record.to_json(), owner, int(ttl * 1000), repr(record.last_activity),
                    record.session_id], client=pipe)
            results = await pipe.execute()
        return [r.session_id for r, ok in zip(records, results, strict=True) if not ok]

    async def activity(self, session_ids: list[str]) -> dict[str, float]:
        """Last activity of each session as the fleet saw it."""
        if not session_ids:
            return {}
        values = await self.redis.mget([_keys(i)[1] for i in session_ids])
        return {i: float(v) for i, v in zip(session_ids, values, strict=True) if v}

    async def try_acquire(self, session_id: str, owner: str, ttl: float) -> bool:
        got = await self.redis.set(_keys(session_id)[2], owner, nx=True, px=int(ttl * 1000))
        return bool(got)

    async def release(self, session_id: str, owner: str) -> None:
        await self._release(keys=[_keys(session_id)[2]], args=[owner])

    async def lease_owner(self, session_id: str) -> str | None:
        value = await self.redis.get(_keys(session_id)[2])
        return _text(value) if value else None

    async def lease_owners(self, session_ids: list[str]) -> dict[str, str | None]:
        if not session_ids:
            return {}
        values = await self.redis.mget([_keys(i)[2] for i in session_ids])
        return {i: (_text(v) if v else None) for i, v in zip(session_ids, values, strict=True)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(raw: bytes | str | None, act: bytes | str | None) -> SessionRecord | None:
    if raw is None:
        return None
    record = SessionRecord.from_json(raw)
    if act is not None:
        record.last_activity = max(record.last_activity, float(act))
    return record
