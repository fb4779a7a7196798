"""What one client may make the streamer hold, and input of any shape (issue #10, items 3 and 4).

- A Socket.IO client that sends and never reads is dropped once what waits for it passes
  ``JIOMOSA_MAX_QUEUED_BYTES``; its input cannot pile up handler tasks; packets that cannot be
  decoded end only that connection, without a stack trace; binary attachments are bounded.
- The plain WebSocket stops reading a client that does not read (the streamer's memory stays
  flat) and answers a too-deep JSON message with an ``error`` event.
- REST answers bodies nested deeper than the JSON parser goes, and ``Authorization`` headers
  that are not UTF-8, with a 4xx, never a 500.

Real streamer processes (tests/helpers.py), real Chromium where a session is needed, clients
speaking the wire protocols by hand (tests/rawclients.py); memory is the streamer's VmRSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import aiohttp
from helpers import Api, PageServer, StreamerProcess
from rawclients import RawSocketIO, rss_mb, send_without_reading, settled_rss_mb

# A ping whose answer echoes it: each answer is about as large as its question (1.2 KB).
ECHOED = {f"k{i}" + "x" * 60: "v" * 64 for i in range(8)}
DEEP = 20_000  # nesting levels: far past the JSON parser's recursion limit, under 64 KiB


def tracebacks(streamer: StreamerProcess) -> list[str]:
    text = streamer.log_path.read_text(errors="replace")
    return [line for line in text.splitlines()
            if "Traceback" in line or "Unknown receive error" in line
            or "Error handling request" in line]


async def still_served(http: aiohttp.ClientSession, streamer: StreamerProcess) -> None:
    """Another client is answered normally."""
    client = await RawSocketIO(http, streamer.base).connect()
    try:
        await client.emit("ping", 5, ack=9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = await client.receive(10)
            if isinstance(msg.data, str) and msg.data.startswith("439["):
                assert json.loads(msg.data[3:])[0]["echo"] == 5
                return
        raise AssertionError("ping was not answered")
    finally:
        await client.close()


# ----------------------------------------------------------------------------- Socket.IO
async def test_socketio_client_that_never_reads_is_dropped(
        start_streamer: type[StreamerProcess]) -> None:
    """30000 pings with an ack, never reading: before, every answer waited in Engine.IO's
    queue (+31 MB, for good); now the client is dropped past 1 MiB and memory stays flat."""
    streamer = start_streamer({"JIOMOSA_WARM_BROWSERS": "0"}).start()
    pid = streamer.proc.pid  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as http:
        before = await settled_rss_mb(pid)
        client = await RawSocketIO(http, streamer.base).connect()
        sent = await send_without_reading(client.send, 30_000,
                                          "420" + json.dumps(["ping", ECHOED]))
        closed, _ = await client.read_until_closed(30)
        after = await settled_rss_mb(pid)
        await client.close()
        await still_served(http, streamer)
    print(f"sent {sent} pings; RSS {before:.1f} -> {after:.1f} MiB; closed: {closed}")
    assert closed, "the streamer kept a client that does not read"
    assert after - before < 12, f"RSS grew by {after - before:.1f} MiB"
    assert any("dropped" in str(r.get("msg")) for r in streamer.log_records())


async def test_socketio_polling_client_that_never_polls_is_dropped(
        start_streamer: type[StreamerProcess]) -> None:
    """The same bound for HTTP long-polling: answers to a client that posts and never polls
    wait in the same queue; past the limit the Engine.IO session ends (before: it grew)."""
    streamer = start_streamer({"JIOMOSA_WARM_BROWSERS": "0"}).start()
    base = streamer.base + "/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as r:
            url = f"{base}&sid={json.loads((await r.text())[1:])['sid']}"
        async with http.post(url, data="40") as r:
            assert r.status == 200
        body = "\x1e".join(["420" + json.dumps(["ping", ECHOED])] * 16)  # 16 per POST at most
        posted = 0
        for _ in range(200):  # 3.8 MB of answers
            async with http.post(url, data=body) as r:
                if r.status != 200:
                    break
                posted += 1
        async with http.get(url) as r:
            status, text = r.status, await r.text()
    print(f"{posted} posts of 16 pings accepted; then {status} {text[:60]}")
    assert posted < 200 and status == 400 and "Invalid session" in text


async def test_socketio_input_flood_does_not_pile_up(
        start_streamer: type[StreamerProcess], pages: PageServer) -> None:
    """8000 text inputs of 4000 characters sent faster than Chrome types them: before, one
    task per event waited with its payload (+60 MB); now at most 32 are in flight and the
    rest are answered ``error`` at once."""
    streamer = start_streamer().start()
    pid = streamer.proc.pid  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as http:
        api = Api(http, streamer.base)
        sid = (await api.create(url=pages.url("/app")))["session_id"]
        client = await RawSocketIO(http, streamer.base).connect()
        await client.emit("subscribe", {"session_id": sid})
        before = await settled_rss_mb(pid)
        packet = "42" + json.dumps(["input:text", {"text": "a" * 4000}])
        sent = await send_without_reading(client.send, 8000, packet)
        await asyncio.sleep(2)
        peak = rss_mb(pid)
        _, texts = await client.read_until_closed(5)
        await client.close()
        status, info = await api.call("GET", f"/api/session/{sid}/info")
        await api.close(sid)
    refused = sum("too many events in flight" in t for t in texts)
    print(f"sent {sent}; RSS {before:.1f} -> {peak:.1f} MiB; refused {refused}")
    assert refused > 0, texts[-5:]
    assert peak - before < 20, f"RSS grew by {peak - before:.1f} MiB"
    assert status == 200 and info["status"] == "ready", info


BAD_PACKETS: list[str | bytes] = [
    "4" + "[" * DEEP,             # Engine.IO message whose JSON is too deep
    "42" + "[" * DEEP,            # Socket.IO event, same
    "42{}",                       # an event that is not a list
    "42[]",                       # an event without a name
    '42[{"a":1}]',                # an event whose name is not a string
    "42[1,2",                     # broken JSON
    "4x",                         # no Socket.IO packet type
    "x",                          # no Engine.IO packet type
    "9",                          # no such Engine.IO packet type
    "",                           # empty
    "44{}",                       # CONNECT_ERROR, which only servers send
    "49[]",                       # no such packet type
    "4null",                      # JSON Engine.IO parses: no Socket.IO packet at all
    "4[]",
    b"\x00\x01binary without an announcing packet",
]


async def test_socketio_undecodable_packets_end_only_that_connection(
        start_streamer: type[StreamerProcess]) -> None:
    """Before: some escaped engineio's reader as a stack trace, others were logged with one
    and the connection went on; now each ends its own connection, quietly."""
    streamer = start_streamer({"JIOMOSA_WARM_BROWSERS": "0"}).start()
    still_open = []
    async with aiohttp.ClientSession() as http:
        for packet in BAD_PACKETS:
            client = await RawSocketIO(http, streamer.base).connect()
            await client.send(packet)
            # Already on the wire when the client is dropped: ignored, not a KeyError.
            await send_without_reading(client.send, 5, "40")
            closed, _ = await client.read_until_closed(10)
            await client.close()
            if not closed:
                still_open.append(packet[:12])
        await still_served(http, streamer)
    assert not still_open, f"connections kept after: {still_open}"
    assert not tracebacks(streamer), tracebacks(streamer)[:5]


async def test_socketio_binary_attachments_are_bounded(
        start_streamer: type[StreamerProcess]) -> None:
    """A packet announcing a million attachments: python-socketio kept every one (+24 MB for
    400 of 60 KB); now the client is dropped once they pass one message's size."""
    streamer = start_streamer({"JIOMOSA_WARM_BROWSERS": "0"}).start()
    pid = streamer.proc.pid  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as http:
        before = await settled_rss_mb(pid)
        client = await RawSocketIO(http, streamer.base).connect()
        await client.send('451000000-["ping",{"_placeholder":true,"num":0}]')
        sent = await send_without_reading(client.send, 400, b"\x00" * 60_000)
        after = await settled_rss_mb(pid)
        closed, _ = await client.read_until_closed(10)
        await client.close()
        await still_served(http, streamer)
    print(f"sent {sent} attachments; RSS {before:.1f} -> {after:.1f} MiB")
    assert closed
    assert after - before < 8, f"RSS grew by {after - before:.1f} MiB"


# ----------------------------------------------------------------------------- plain WebSocket
async def test_plain_websocket_client_that_never_reads_stays_bounded(
        start_streamer: type[StreamerProcess], pages: PageServer) -> None:
    """The plain WebSocket handles a client's messages one at a time and each answer waits for
    the socket to drain, so a client that does not read is simply not read either: memory
    stays flat and the heartbeat (no pong read) ends the connection. A regression guard (this
    held before issue #10): handling messages concurrently would break it."""
    streamer = start_streamer().start()
    pid = streamer.proc.pid  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as http:
        api = Api(http, streamer.base)
        sid = (await api.create(url=pages.url("/static")))["session_id"]
        before = await settled_rss_mb(pid)
        ws = await http.ws_connect(
            f"{streamer.base.replace('http', 'ws', 1)}/api/session/{sid}/stream",
            max_msg_size=0, autoclose=False, autoping=False)
        sent = await send_without_reading(
            ws.send_str, 30_000, json.dumps({"event": "ping", "data": ECHOED}))
        after = await settled_rss_mb(pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, info = await api.call("GET", f"/api/session/{sid}/info")
            if not info["clients"]:
                break
            await asyncio.sleep(0.5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 3)
        await api.close(sid)
    print(f"sent {sent}; RSS {before:.1f} -> {after:.1f} MiB; clients {info['clients']}")
    assert sent < 30_000, "the streamer read everything a client that does not read sent"
    assert after - before < 12, f"RSS grew by {after - before:.1f} MiB"
    assert not info["clients"], "the connection was never closed"


async def test_plain_websocket_too_deep_json_is_an_error_event(
        api: Api, pages: PageServer, streamer: StreamerProcess) -> None:
    """Before: ``RecursionError`` ended the connection with a stack trace in the log."""
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    url = f"{streamer.base.replace('http', 'ws', 1)}/api/session/{sid}/stream"
    async with api.http.ws_connect(url) as ws:
        await ws.send_str('{"event": "ping", "data": ' + "[" * DEEP + "]" * DEEP + "}")
        await ws.send_str(json.dumps({"event": "ping", "data": 1, "id": "after"}))
        answers: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(a.get("id") == "after" for a in answers):
            msg = await ws.receive(10)
            if msg.type == aiohttp.WSMsgType.TEXT:
                answers.append(json.loads(msg.data))
            elif msg.type != aiohttp.WSMsgType.BINARY:
                break
    await api.close(sid)
    errors = [a["data"]["message"] for a in answers if a["event"] == "error"]
    assert "message is nested too deeply" in errors, answers
    assert any(a["event"] == "pong" and a.get("id") == "after" for a in answers), answers


# ----------------------------------------------------------------------------- REST
async def test_too_deep_json_bodies_are_400(api: Api, pages: PageServer) -> None:
    """Before: ``RecursionError`` in read_json, answered 500 "internal error"."""
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    bodies = ["[" * DEEP + "]" * DEEP, '{"a":' * (DEEP // 2) + "1" + "}" * (DEEP // 2)]
    for path in ("/api/session/create", f"/api/session/{sid}/load",
                 f"/api/session/{sid}/input/click"):
        for body in bodies:
            status, answer = await api.call("POST", path, raw=body.encode())
            assert status == 400, (path, status, answer)
            assert answer == {"error": "body is nested too deeply"}, answer
    await api.close(sid)


def raw_request(port: int, head: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (clients refuse to send such headers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):  # Connection: close: the server ends it
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


async def test_authorization_that_is_not_utf8_is_not_a_500(streamer: StreamerProcess) -> None:
    """Before: ``UnicodeEncodeError`` in is_admin, answered 500."""
    for value in (b"Bearer \xff\xfe\xfd", b"\xc3\x28", b"Bearer test-admin-token\x80"):
        status, data = await asyncio.to_thread(
            raw_request, streamer.port,
            b"GET /api/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: " + value + b"\r\n\r\n")
        assert status in (200, 401), data[:300]
        body = data.split(b"\r\n\r\n", 1)[1]
        if status == 200:
            assert b'"redacted": true' in body, body[:300]
