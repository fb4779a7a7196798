"""A delta-frame client written from docs/protocol.md (*Delta frames*), for the tests: it
rebuilds the picture from a key frame and updates (PIL + numpy), over Socket.IO or the plain
WebSocket, checks every message the way the contract asks a reader to, and keeps what it
rebuilt per seq so that a test can compare it with the full frame of the same seq."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import socketio
from PIL import Image

FORMAT_NAMES = {1: "jpeg", 2: "png", 3: "webp"}
JMF = struct.Struct(">3sBBBHIHHQ")
JMD = struct.Struct(">3sBHHIIHHQ")


class BadUpdate(ValueError):
    """An update that must not be applied (the client asks for a key frame)."""


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).copy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@dataclass
class Update:
    seq: int
    base_seq: int
    width: int
    height: int
    copies: list[list[int]]
    images: list[tuple[str, bytes, list[list[int]]]]
    size: int


@dataclass
class DeltaState:
    """The picture the client holds and its history."""

    picture: np.ndarray | None = None
    seq: int = 0
    waiting_key: bool = True
    pictures: dict[int, np.ndarray] = field(default_factory=dict)
    lossless: dict[int, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    """Per seq: the rects an update drew from lossless images."""
    keys: list[int] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    bytes: list[tuple[float, int, str]] = field(default_factory=list)
    """(time, size of the images, kind) of every message taken."""

    def key(self, seq: int, jpeg: bytes) -> None:
        self.picture = decode(jpeg)
        self.seq, self.waiting_key = seq, False
        self.keys.append(seq)
        self.pictures[seq] = self.picture.copy()
        self.bytes.append((time.monotonic(), len(jpeg), "key"))

    def apply(self, u: Update) -> bool:
        """Apply an update; False (and wait for a key frame) if it does not fit."""
        if self.waiting_key:
            return False
        try:
            if self.picture is None or u.base_seq != self.seq:
                raise BadUpdate(f"base {u.base_seq} but holding {self.seq}")
            h, w = self.picture.shape[:2]
            if (u.width, u.height) != (w, h):
                raise BadUpdate("size changed without a key frame")
            snapshot = self.picture.copy()
            out = self.picture.copy()
            for sx, sy, cw, ch, dx, dy in u.copies:
                x, y = sx + dx, sy + dy
                if not (0 <= sx and 0 <= sy and sx + cw <= w and sy + ch <= h
                        and 0 <= x and 0 <= y and x + cw <= w and y + ch <= h and cw > 0
                        and ch > 0):
                    raise BadUpdate(f"copy {sx, sy, cw, ch, dx, dy} outside the picture")
                out[y:y + ch, x:x + cw] = snapshot[sy:sy + ch, sx:sx + cw]
            drawn = np.zeros((h, w), bool)
            lossless = []
            for fmt, data, rects in u.images:
                image = decode(data)
                ih, iw = image.shape[:2]
                for x, y, rw, rh, ax, ay in rects:
                    if not (rw > 0 and rh > 0 and x + rw <= w and y + rh <= h
                            and ax + rw <= iw and ay + rh <= ih):
                        raise BadUpdate(f"rect {x, y, rw, rh, ax, ay} outside")
                    if drawn[y:y + rh, x:x + rw].any():
                        raise BadUpdate("rects overlap")
                    drawn[y:y + rh, x:x + rw] = True
                    out[y:y + rh, x:x + rw] = image[ay:ay + rh, ax:ax + rw]
                    if fmt in ("png", "webp"):
                        lossless.append((x, y, rw, rh))
        except BadUpdate as exc:
            self.rejected.append(str(exc))
            self.waiting_key = True
            return False
        self.picture, self.seq = out, u.seq
        self.pictures[u.seq] = out.copy()
        self.lossless[u.seq] = lossless
        self.updates.append(u)
        self.bytes.append((time.monotonic(), u.size, "delta"))
        return True


def parse_jmd(message: bytes) -> Update:
    """A plain WebSocket ``JMD`` message, every length checked against the message."""
    if len(message) < JMD.size:
        raise BadUpdate("short header")
    magic, version, hlen, _flags, seq, base, w, h, _ts = JMD.unpack_from(message)
    if magic != b"JMD" or version != 1 or hlen < JMD.size:
        raise BadUpdate("bad header")
    pos = hlen

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(message):
            raise BadUpdate("truncated")
        out = struct.unpack_from(fmt, message, pos)
        pos += size
        return out

    (n_copies,) = take(">H")
    copies = [list(take(">HHHHhh")) for _ in range(n_copies)]
    (n_images,) = take(">H")
    images = []
    total = 0
    for _ in range(n_images):
        code, n_rects = take(">BH")
        if code not in FORMAT_NAMES:
            raise BadUpdate("unknown format")
        rects = [list(take(">6H")) for _ in range(n_rects)]
        (length,) = take(">I")
        if pos + length > len(message):
            raise BadUpdate("image past the message")
        images.append((FORMAT_NAMES[code], message[pos:pos + length], rects))
        pos += length
        total += length
    if pos != len(message):
        raise BadUpdate("trailing bytes")
    return Update(seq, base, w, h, copies, images, total + 12 * len(copies))


def update_of_event(d: dict[str, Any]) -> Update:
    images = [(i["format"], bytes(i["data"]), i["rects"]) for i in d["images"]]
    return Update(d["seq"], d["base_seq"], d["width"], d["height"], d["copies"], images,
                  sum(len(i[1]) for i in images) + 12 * len(d["copies"]))


class SioDeltaClient:
    """A Socket.IO delta subscriber."""

    def __init__(self, base: str, reconnection: bool = False) -> None:
        self.base = base
        self.state = DeltaState()
        self.client = socketio.AsyncClient(reconnection=reconnection)
        self.events: dict[str, list[Any]] = {}
        self.changed = asyncio.Event()
        self.client.on("*", self._any)
        self.client.on("frame", self._frame)
        self.client.on("frame:delta", self._delta)
        self.wire_bytes = 0

    async def _any(self, event: str, data: Any = None) -> None:
        self.events.setdefault(event, []).append(data)
        self.changed.set()

    async def _frame(self, data: dict[str, Any]) -> None:
        self.events.setdefault("frame", []).append(data)
        if data.get("key"):
            self.state.key(data["seq"], bytes(data["image"]))
        self.changed.set()

    async def _delta(self, data: dict[str, Any]) -> None:
        self.events.setdefault("frame:delta", []).append(data)
        before = len(self.state.rejected)
        self.state.apply(update_of_event(data))
        if len(self.state.rejected) > before:  # lost track: ask once, ignore until it comes
            await self.client.emit("frame:key")
        self.changed.set()

    async def connect(self) -> SioDeltaClient:
        await self.client.connect(self.base, transports=["websocket"], wait_timeout=10)
        return self

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()

    async def subscribe(self, session_id: str, **options: Any) -> dict[str, Any]:
        start = len(self.events.get("subscribe:response", []))
        await self.client.emit("subscribe", {"session_id": session_id, "delta": True,
                                             **options})
        return await self.wait("subscribe:response", start=start)

    async def wait(self, event: str, predicate: Callable[[Any], bool] = lambda _: True,
                   timeout: float = 10.0, start: int = 0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for data in self.events.get(event, [])[start:]:
                if predicate(data):
                    return data
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} within {timeout}s; "
                                     f"errors: {self.events.get('error')}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.2)

    async def wait_seq(self, seq: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.state.seq < seq:
            if time.monotonic() > deadline:
                raise AssertionError(f"delta client at {self.state.seq}, wanted {seq}; "
                                     f"rejected: {self.state.rejected}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.2)


class WsDeltaClient:
    """A plain WebSocket delta subscriber (``?delta=1``)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.state = DeltaState()
        self.texts: list[dict[str, Any]] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> WsDeltaClient:
        self.ws = await self.http.ws_connect(self.url)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        import json
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.texts.append(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                data = msg.data
                if data[:3] == b"JMF":
                    _, _, hlen, _q, flags, seq, _w, _h, _ts = JMF.unpack_from(data)
                    if flags & 1:
                        self.state.key(seq, data[hlen:])
                elif data[:3] == b"JMD":
                    try:
                        update = parse_jmd(data)
                    except BadUpdate as exc:
                        self.state.rejected.append(str(exc))
                        self.state.waiting_key = True
                        await self.ws.send_str('{"event":"frame:key"}')
                        continue
                    before = len(self.state.rejected)
                    self.state.apply(update)
                    if len(self.state.rejected) > before:
                        await self.ws.send_str('{"event":"frame:key"}')

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def wait_seq(self, seq: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.state.seq < seq:
            if time.monotonic() > deadline:
                raise AssertionError(f"delta client at {self.state.seq}, wanted {seq}; "
                                     f"rejected: {self.state.rejected}")
            await asyncio.sleep(0.02)
