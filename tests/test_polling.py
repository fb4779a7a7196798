"""HTTP polling as a KaiOS-style client does it: GET /api/session/{id}/frame?after=SEQ long-polls
until a newer frame exists (bounded wait), input goes through REST, one session per device.
Frames come only on change, without busy polling."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from helpers import Api, PageServer, pixel
from multidict import CIMultiDict


async def poll(api: Api, sid: str, after: int, timeout: float = 10.0,
               **params: Any) -> tuple[int, int, bytes, CIMultiDict[str], float]:
    """One long-poll: (status, seq, body, headers, seconds it took)."""
    t0 = time.monotonic()
    query = {"after": str(after), "timeout": str(timeout), **{k: str(v) for k, v in
                                                             params.items()}}
    async with api.http.get(f"{api.base}/api/session/{sid}/frame", params=query) as r:
        body = await r.read()
        seq = int(r.headers.get("X-Frame-Seq", after))
        return r.status, seq, body, CIMultiDict(r.headers), time.monotonic() - t0


async def settled(api: Api, sid: str, seq: int = 0) -> int:
    """The seq once the page has stopped repainting (a poll that waits and gets 204)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, seq, _, _, _ = await poll(api, sid, seq, timeout=0.7)
        if status == 204:
            return seq
    raise AssertionError("the page never stopped repainting")


async def test_static_page_poll_loop_does_not_busy_poll(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    status, seq, body, headers, took = await poll(api, sid, 0)
    assert status == 200 and body[:2] == b"\xff\xd8" and took < 2
    assert headers["Content-Type"] == "image/jpeg"
    assert (int(headers["X-Frame-Width"]), int(headers["X-Frame-Height"])) == (1280, 720)
    assert float(headers["X-Frame-Timestamp"]) > 1e9
    # The device's loop: nothing changes, so each poll waits its full timeout and answers 204.
    results = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.0:
        status, new_seq, body, _, took = await poll(api, sid, seq, timeout=1.0)
        results.append((status, took))
        if status == 200:
            seq = new_seq
    assert len(results) <= 4, results  # ~1 request a second, not a busy loop
    no_change = [took for status, took in results if status == 204]
    assert len(no_change) >= 2 and all(took >= 0.9 for took in no_change), results
    await api.close(sid)


async def test_each_change_answers_the_pending_poll(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/color")))["session_id"]
    status, seq, body, _, _ = await poll(api, sid, 0)
    assert status == 200 and pixel(body, 10, 10)[0] < 30  # black
    seq = await settled(api, sid, seq)
    for want_white in (True, False):
        pending = asyncio.ensure_future(poll(api, sid, seq, timeout=15))
        await asyncio.sleep(0.3)
        assert not pending.done(), "the poll answered although nothing changed"
        clicked = time.monotonic()
        status_in, ack = await api.call("POST", f"/api/session/{sid}/input/click",
                                        {"x": 10, "y": 10})
        assert status_in == 200 and ack["success"] is True
        status, new_seq, body, _, _ = await pending
        assert status == 200 and new_seq > seq
        seq = new_seq
        # The first newer frame may still be mid-change; keep polling (as the device does)
        # until the picture shows the click.
        while (pixel(body, 10, 10)[0] > 220) != want_white:
            status, seq, body, _, _ = await poll(api, sid, seq, timeout=5)
            assert status == 200, "the change never reached the picture"
        assert time.monotonic() - clicked < 5
        seq = await settled(api, sid, seq)
    await api.close(sid)


async def test_animated_page_poll_loop_gets_fresh_frames(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/anim")))["session_id"]
    _, seq, _, _, _ = await poll(api, sid, 0)
    seqs = []
    t0 = time.monotonic()
    for _ in range(20):
        status, seq, body, headers, _ = await poll(api, sid, seq, timeout=5, quality=30)
        assert status == 200 and body[:2] == b"\xff\xd8"
        assert headers["ETag"].endswith('-30"')  # the re-encoded variant
        seqs.append(seq)
    elapsed = time.monotonic() - t0
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert elapsed < 15, f"20 polls of an animated page took {elapsed:.1f}s"
    await api.close(sid)


async def test_poll_ends_when_the_session_closes(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    seq = await settled(api, sid)
    pending = asyncio.ensure_future(poll(api, sid, seq, timeout=25))
    await asyncio.sleep(0.3)
    await api.close(sid)
    status, _, body, _, took = await asyncio.wait_for(pending, 10)
    assert status == 410 and b"session closed" in body and took < 8
    status, _, body, _, _ = await poll(api, sid, seq, timeout=1)
    assert status == 404 and b"Session not found" in body


async def test_device_session_reused_after_restart(api: Api, pages: PageServer) -> None:
    """One session per device (a fixed id): after the session is re-created, the device's old,
    larger ``after`` must not leave it waiting for a frame number the new session reaches only
    much later."""
    device_id = "kaios-" + secrets.token_hex(6)
    first = await api.create(session_id=device_id, url=pages.url("/anim"))
    assert first["session_id"] == device_id
    status, duplicate = await api.call("POST", "/api/session/create",
                                       {"session_id": device_id})
    assert status == 400 and duplicate == {"error": "Session already exists",
                                           "session_id": device_id}
    seq = 0
    while seq < 30:  # let the animation run up a frame count
        _, seq, _, _, _ = await poll(api, device_id, seq, timeout=5)
    await api.close(device_id)
    await api.create(session_id=device_id, url=pages.url("/static"))
    status, new_seq, body, _, took = await poll(api, device_id, seq, timeout=10)
    assert status == 200 and body[:2] == b"\xff\xd8" and new_seq < seq and took < 3
    await api.close(device_id)


async def test_browser_pollers_can_read_the_frame_headers(api: Api, pages: PageServer) -> None:
    """KaiOS hosted apps poll cross-origin: CORS must expose the frame headers; and a browser's
    automatic revalidation (If-None-Match) makes re-polling an unchanged page cheap."""
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    url = f"{api.base}/api/session/{sid}/frame"
    async with api.http.get(url, headers={"Origin": "app://kaios.example"}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        exposed = {h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"ETag", "X-Frame-Seq", "X-Frame-Width", "X-Frame-Height"} <= exposed
        etag = r.headers["ETag"]
    # The original client's loop (every ~150 ms, no ?after): only the first poll carries a body.
    # (A late repaint right after the load may still change the picture once.)
    statuses = []
    for _ in range(8):
        async with api.http.get(url, headers={"If-None-Match": etag}) as r:
            statuses.append(r.status)
            if r.status == 200:
                assert len(await r.read()) > 0
                etag = r.headers["ETag"]
        await asyncio.sleep(0.15)
    assert statuses.count(304) >= 7 and statuses[-4:] == [304] * 4, statuses
    await api.close(sid)
