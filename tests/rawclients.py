"""Hand-made clients for abuse and fuzz tests: Engine.IO v4 / Socket.IO v5 and the plain
WebSocket spoken over a bare aiohttp websocket (so that a test can send what no library sends,
and stop reading), and the streamer's resident memory."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp


def rss_mb(pid: int) -> float:
    """Resident memory of one process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def settled_rss_mb(pid: int, settle: float = 2.0, timeout: float = 20.0) -> float:
    """RSS once it has not moved by more than 0.5 MiB for ``settle`` seconds (or at the
    deadline): what a process holds after its work, not in the middle of it."""
    deadline = time.monotonic() + timeout
    last, since = rss_mb(pid), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = rss_mb(pid)
        if abs(now - last) > 0.5:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return now
    return rss_mb(pid)


class RawSocketIO:
    """Socket.IO over a websocket, by hand: ``send`` takes the Socket.IO packet text as it
    travels (``42["ping",1]``, ``420["ping",1]`` with an ack id)."""

    def __init__(self, http: aiohttp.ClientSession, base: str, query: str = "") -> None:
        self.url = (base.replace("http", "ws", 1)
                    + f"/socket.io/?EIO=4&transport=websocket{query}")
        self.http = http
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.sid = ""

    async def connect(self, timeout: float = 10.0) -> RawSocketIO:
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0, autoclose=False,
                                             timeout=aiohttp.ClientWSTimeout(ws_close=2))
        opened = await asyncio.wait_for(self.ws.receive(), timeout)
        assert isinstance(opened.data, str) and opened.data.startswith("0{"), opened
        await self.ws.send_str("40")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if isinstance(msg.data, str) and msg.data.startswith("40"):
                self.sid = json.loads(msg.data[2:])["sid"]
                return self
        raise AssertionError("no Socket.IO connect answer")

    async def send(self, packet: str | bytes) -> None:
        assert self.ws is not None
        if isinstance(packet, bytes):
            await self.ws.send_bytes(packet)
        else:
            await self.ws.send_str(packet)

    async def emit(self, event: str, data: Any = None, ack: int | None = None) -> None:
        await self.send("42" + ("" if ack is None else str(ack))
                        + json.dumps([event] if data is None else [event, data]))

    async def receive(self, timeout: float) -> aiohttp.WSMessage:
        """The next message, answering Engine.IO pings on the way."""
        assert self.ws is not None
        deadline = time.monotonic() + timeout
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), deadline - time.monotonic())
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "2":
                await self.ws.send_str("3")
                continue
            return msg

    async def read_until_closed(self, timeout: float) -> tuple[bool, list[str]]:
        """Read (answering pings) until the server ends the connection or ``timeout`` passes;
        (closed by the server, the text messages read)."""
        texts: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                msg = await self.receive(left)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    texts.append(msg.data)
                elif msg.type != aiohttp.WSMsgType.BINARY:
                    return True, texts
        except TimeoutError:
            return False, texts
        except (aiohttp.ClientError, ConnectionError):
            return True, texts
        return False, texts

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                pass


async def send_without_reading(send: Any, packets: int, message: str,
                               stall: float = 3.0) -> int:
    """Send ``message`` up to ``packets`` times, never reading; stop when the connection
    breaks or a send stalls for ``stall`` seconds (the server stopped reading us). Returns how
    many were sent."""
    sent = 0
    try:
        for _ in range(packets):
            await asyncio.wait_for(send(message), stall)
            sent += 1
    except (TimeoutError, aiohttp.ClientError, ConnectionError, RuntimeError):
        pass
    return sent
