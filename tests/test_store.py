"""Registry and lease semantics, the same for the in-process store and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import RedisServer

from jiomosa.fleet.redis_store import RedisStore
from jiomosa.fleet.store import MemoryStore, SessionRecord, Store


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server = RedisServer(tmp_path)
    server.start()
    redis_store = RedisStore(server.url)
    await redis_store.start()
    yield redis_store
    await redis_store.stop()
    server.stop()


def record(session_id: str = "s1", owner: str = "a") -> SessionRecord:
    now = time.time()
    return SessionRecord(session_id, now, now, owner, endpoint={"kind": "grid"},
                         viewport={"width": 800}, state="ready")


async def test_add_is_exclusive_and_round_trips(store: Store) -> None:
    assert await store.add(record(), 3.0)
    assert not await store.add(record(owner="b"), 3.0)
    got = await store.get("s1")
    assert got is not None and got.owner == "a" and got.viewport == {"width": 800}
    assert [r.session_id for r in await store.all()] == ["s1"]
    assert await store.lease_owner("s1") == "a"
    await store.remove("s1")
    assert await store.get("s1") is None and await store.all() == []


async def test_touch_only_moves_forward(store: Store) -> None:
    rec = record()
    await store.add(rec, 3.0)
    await store.touch("s1", rec.last_activity + 10)
    await store.touch("s1", rec.last_activity + 5)
    got = await store.get("s1")
    assert got is not None and got.last_activity == pytest.approx(rec.last_activity + 10)
    await store.touch("gone", time.time())  # unknown sessions stay unknown
    assert await store.get("gone") is None


async def test_leases_expire_and_are_taken_once(store: Store) -> None:
    await store.add(record(), 1.0)
    assert not await store.try_acquire("s1", "b", 1.0)  # still held by a
    assert await store.renew([record()], "a", 0.3) == []
    await asyncio.sleep(0.5)
    assert await store.lease_owner("s1") is None
    results = await asyncio.gather(*(store.try_acquire("s1", o, 2.0) for o in "bcd"))
    assert sorted(results) == [False, False, True]
    winner = await store.lease_owner("s1")
    assert winner in ("b", "c", "d")
    # The old owner learns it lost the session instead of taking it back.
    assert await store.renew([record()], "a", 2.0) == ["s1"]
    await store.release("s1", "a")  # not a's to release
    assert await store.lease_owner("s1") == winner
    await store.release("s1", winner)
    assert await store.lease_owner("s1") is None


async def test_renew_re_registers_after_a_wipe(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    store = RedisStore(server.url)
    await store.start()
    await store.add(record(), 3.0)
    server.cli("FLUSHALL")
    assert await store.get("s1") is None
    assert await store.renew([record()], "a", 3.0) == []
    got = await store.get("s1")
    assert got is not None and await store.lease_owner("s1") == "a"
    await store.stop()
    server.stop()
