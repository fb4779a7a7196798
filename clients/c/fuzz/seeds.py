#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_client.c: valid server streams of every kind the client
meets (delta frames included: JMF key frames and JMD updates with copies, RAW1 stand-in
images, real PNGs and a real JPEG), plus the regression inputs in fuzz/regressions/ (copied,
so one directory seeds a run).

    python3 clients/c/fuzz/seeds.py DIR

Input layout (fuzz_client.c): byte 0 = how the stream is cut into reads, byte 1 = flags
(bit 0: an HTTP upgrade answer first; bits 1-7: message limit (1 + n) KiB), then the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # the key the harness checks the upgrade answer with
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LIMIT_64K = 63 << 1  # flags bits 1-7 = 63: a 64 KiB message limit
LIMIT_128K = 127 << 1


def frame(opcode: int, payload: bytes, *, fin: bool = True, length: str = "min",
          mask: bytes | None = None) -> bytes:
    """One WebSocket frame; length "min", "16" or "64" picks the length encoding."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if mask is not None else 0
    if length == "64" or (length == "min" and n > 0xFFFF):
        head = bytes([first, masked | 127]) + struct.pack(">Q", n)
    elif length == "16" or (length == "min" and n > 125):
        head = bytes([first, masked | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, masked | n])
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def jmf(seq: int, width: int, height: int, jpeg_size: int, quality: int = 80) -> bytes:
    """A JMF frame message (docs/protocol.md): 24-byte header and a JPEG-shaped payload."""
    jpeg = b"\xff\xd8\xff\xe0" + bytes(i % 251 for i in range(max(jpeg_size - 6, 0))) + b"\xff\xd9"
    return struct.pack(">3sBBBHIHHQ", b"JMF", 1, 24, quality, 0, seq, width, height,
                       1_795_635_672_870) + jpeg


# A 16x16 baseline 4:2:0 JPEG (made once with Pillow), so seeds need no image library.
JPEG_16 = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABQODxIPDRQSEBIXFRQYHjIhHhwcHj0sLiQySUBMS0dARkVQWnNiUFVt"
    "VkVGZIhlbXd7gYKBTmCNl4x9lnN+gXz/2wBDARUXFx4aHjshITt8U0ZTfHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8"
    "fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHz/wAARCAAQABADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAA"
    "AAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAk"
    "M2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKT"
    "lJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QA"
    "HwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdh"
    "cRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hp"
    "anN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk"
    "5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDDhtNvbOa0IbTb2zmr0Npt7ZzWhDabe2c1z1MRbyt+H+dx4LF7"
    "H//Z")

Copy = tuple[int, int, int, int, int, int]  # sx, sy, w, h, dx, dy
Rect = tuple[int, int, int, int, int, int]  # x, y, w, h, ax, ay


def key_frame(seq: int, width: int, height: int, jpeg: bytes | None = None) -> bytes:
    """A JMF key frame (flags bit 0); without a real JPEG the harness makes up a picture."""
    body = jpeg if jpeg is not None else b"\xff\xd8\xff\xe0" + bytes(20) + b"\xff\xd9"
    return struct.pack(">3sBBBHIHHQ", b"JMF", 1, 24, 80, 1, seq, width, height,
                       1_795_635_672_870) + body


def jmd(seq: int, base: int, width: int, height: int, copies: list[Copy],
        images: list[tuple[int, bytes, list[Rect]]], header: int = 28) -> bytes:
    """A JMD update (docs/protocol.md, delta frames)."""
    out = struct.pack(">3sBHHIIHHQ", b"JMD", 1, header, 0, seq, base, width, height,
                      1_795_635_672_900) + bytes(header - 28)
    out += struct.pack(">H", len(copies))
    out += b"".join(struct.pack(">HHHHhh", *c) for c in copies)
    out += struct.pack(">H", len(images))
    for fmt, data, rects in images:
        out += struct.pack(">BH", fmt, len(rects))
        out += b"".join(struct.pack(">6H", *r) for r in rects)
        out += struct.pack(">I", len(data)) + data
    return out


def raw(width: int, height: int, seed: int = 0) -> bytes:
    """The harness's stand-in codec: "RAW1", u16 width, u16 height, RGB rows."""
    pixels = bytes((x * 5 + y * 3 + seed + c) & 255 for y in range(height) for x in range(width)
                   for c in range(3))
    return b"RAW1" + struct.pack(">HH", width, height) + pixels


def png(width: int, height: int, color_type: int = 2, seed: int = 0) -> bytes:
    """A real PNG (8-bit RGB, or grey with 0): zlib and CRCs from the standard library."""
    channels = 3 if color_type == 2 else 1
    rows = b"".join(b"\x00" + bytes((x * 9 + y * 4 + seed) & 255 for x in range(width * channels))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                                               color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def event(name: str, data: object, msg_id: int | None = None) -> bytes:
    envelope: dict[str, object] = {"event": name, "data": data}
    if msg_id is not None:
        envelope["id"] = msg_id
    return json.dumps(envelope, separators=(",", ":")).encode()


def upgrade_answer(key: bytes = RFC_KEY, extra: bytes = b"") -> bytes:
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n")


def seeds() -> dict[str, bytes]:
    sid = "fJbcziuBktCgCDy1iv_oA8cHvummDsLE"
    status = event("status", {"message": "Connected to Jiomosa", "type": "connection",
                              "sid": "ws-e3c7f622eb71d4b3"})
    subscribed = event("subscribed", {"session_id": sid, "message": f"Subscribed to {sid}"})
    ack = event("input:acknowledged", {"type": "click", "session_id": sid, "x": 10.0,
                                       "y": 10.0, "latency_ms": 12.13}, 1)
    closed = event("session:closed", {"session_id": sid, "reason": "closed by client"})
    small, medium = jmf(4, 240, 296, 60), jmf(5, 1280, 720, 3000)
    close_1000 = frame(8, struct.pack(">H", 1000) + b"session closed")
    stream = (frame(1, status) + frame(1, subscribed) + frame(2, small) + frame(1, ack)
              + frame(2, medium) + frame(1, closed) + close_1000)
    text = "".join(chr(c) for c in (0x48, 0xE9, 0x4E2D, 0x1F600)).encode()  # 1-4 byte UTF-8
    return {
        # A whole session as the streamer sends it, read whole and in pieces.
        "session-whole": bytes([0, LIMIT_64K]) + stream,
        "session-pieces": bytes([13, LIMIT_64K]) + stream,
        "session-with-upgrade": bytes([0, LIMIT_64K | 1]) + upgrade_answer() + stream,
        "upgrade-lowercase": bytes([5, LIMIT_64K | 1]) + b"HTTP/1.1 101 Switching Protocols\r\n"
        b"upgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-accept: "
        + base64.b64encode(hashlib.sha1(RFC_KEY + GUID).digest()) + b"\r\n\r\n" + frame(1, status),
        "upgrade-refused": bytes([0, LIMIT_64K | 1])
        + b'HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n'
        + b'{"error": "Session not found"}\n',
        "upgrade-with-extension": bytes([0, LIMIT_64K | 1])
        + upgrade_answer(extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
        + frame(1, status),
        # Texts: one frame, UTF-8 of every width, empty, and a text the printer must escape.
        "text": bytes([0, 0]) + frame(1, ack),
        "text-utf8": bytes([3, 0]) + frame(1, event("title", text.decode())),
        "text-empty": bytes([0, 0]) + frame(1, b""),
        "text-controls": bytes([0, 0]) + frame(1, b'{"event":"x\nframe seq=1","data":"\x1b[2J"}'),
        # Binary JMF frames with 7-, 16- and 64-bit lengths (64-bit ones non-minimal).
        "jmf-7bit": bytes([0, 0]) + frame(2, jmf(1, 1, 1, 40)),
        "jmf-16bit": bytes([0, LIMIT_64K]) + frame(2, jmf(2, 320, 240, 900), length="16"),
        "jmf-64bit": bytes([0, LIMIT_64K]) + frame(2, jmf(3, 320, 240, 300), length="64"),
        "jmf-long-header": bytes([0, 0]) + frame(2, jmf(3, 2, 2, 30)[:4] + bytes([40])
                                                 + jmf(3, 2, 2, 30)[5:24] + bytes(16)
                                                 + b"\xff\xd8\xff\xd9"),
        # Fragmented messages, with control frames between the fragments.
        "fragmented-text": bytes([0, 0]) + frame(1, ack[:10], fin=False)
        + frame(9, b"ping!") + frame(0, ack[10:30], fin=False) + frame(10, b"")
        + frame(0, ack[30:]),
        "fragmented-jmf": bytes([7, LIMIT_64K]) + frame(2, medium[:100], fin=False)
        + frame(0, medium[100:2000], fin=False, length="16") + frame(0, medium[2000:], length="64"),
        # Control frames: ping, pong, close with and without code and reason.
        "ping-pong": bytes([0, 0]) + frame(9, b"") + frame(9, b"x" * 125) + frame(10, b"abc"),
        "close-code-reason": bytes([0, 0]) + close_1000,
        "close-empty": bytes([0, 0]) + frame(8, b""),
        "close-going-away": bytes([1, 0]) + frame(8, struct.pack(">H", 1001) + "été".encode()),
        # What the client must refuse: masked server frames, reserved bits, over the limit.
        "masked": bytes([0, 0]) + frame(1, ack, mask=b"\x37\xfa\x21\x3d"),
        "reserved-bits": bytes([0, 0]) + bytes([0xC1, 2]) + b"{}",
        "over-limit-16bit": bytes([0, 0]) + frame(2, jmf(9, 64, 64, 2000), length="16"),
        "over-limit-fragments": bytes([0, 0]) + frame(2, small, fin=False)
        + frame(0, jmf(9, 64, 64, 1000)),
        "large-128k-limit": bytes([0, LIMIT_128K]) + frame(2, jmf(10, 640, 480, 6000)),
        **delta_seeds(),
    }


def delta_seeds() -> dict[str, bytes]:
    w, h = 64, 48
    scroll = jmd(2, 1, w, h, [(0, 8, w, h - 8, 0, -8)], [(1, raw(w, 8), [(0, h - 8, w, 8, 0, 0)])])
    tiles = jmd(3, 2, w, h, [], [(2, png(32, 16), [(0, 0, 16, 16, 0, 0), (40, 20, 16, 16, 16, 0)]),
                                 (1, raw(8, 8, 7), [(20, 30, 8, 8, 0, 0)])])
    real_jpeg = jmd(4, 3, w, h, [(10, 10, 20, 20, 5, -3)], [(1, JPEG_16, [(48, 32, 16, 16, 0, 0)])])
    grey_png = jmd(5, 4, w, h, [], [(2, png(8, 8, 0), [(1, 1, 8, 8, 0, 0)])])
    stream = (frame(2, key_frame(1, w, h)) + frame(2, scroll) + frame(2, tiles)
              + frame(2, real_jpeg) + frame(2, grey_png))
    broken_png = png(16, 16)
    broken_png = broken_png[:45] + bytes([broken_png[45] ^ 0x55]) + broken_png[46:]
    return {
        "delta-session": bytes([0, LIMIT_64K]) + stream,
        "delta-session-pieces": bytes([11, LIMIT_64K]) + stream,
        "delta-real-key-frame": bytes([0, LIMIT_64K]) + frame(2, key_frame(1, 16, 16, JPEG_16))
        + frame(2, jmd(2, 1, 16, 16, [(0, 0, 8, 16, 8, 0)], [(1, JPEG_16, [(0, 0, 8, 8, 8, 8)])])),
        "delta-long-header": bytes([0, LIMIT_64K]) + frame(2, key_frame(1, w, h))
        + frame(2, jmd(2, 1, w, h, [(0, 0, 4, 4, 60, 44)], [], header=40)),
        "delta-wrong-base": bytes([0, LIMIT_64K]) + frame(2, key_frame(1, w, h))
        + frame(2, jmd(9, 7, w, h, [], [(1, raw(4, 4), [(0, 0, 4, 4, 0, 0)])])),
        "delta-rect-outside-picture": bytes([0, LIMIT_64K]) + frame(2, key_frame(1, w, h))
        + frame(2, jmd(2, 1, w, h, [], [(1, raw(4, 4), [(62, 0, 4, 4, 0, 0)])])),
        "delta-copy-outside-picture": bytes([0, LIMIT_64K]) + frame(2, key_frame(1, w, h))
        + frame(2, jmd(2, 1, w, h, [(0, 0, 8, 8, -1, 0)], [])),
        "delta-rect-outside-image": bytes([0, LIMIT_64K]) + frame(2, key_frame(1, w, h))
        + frame(2, jmd(2, 1, w, h, [(0, 0, 8, 8, 8, 0)], [(2, png(8, 8), [(0, 0, 8, 8, 1, 0)])])),
        "delta-broken-png": bytes([0, LIMIT_64K]) + frame(2, key_frame(1, w, h))
        + frame(2, jmd(2, 1, w, h, [], [(2, broken_png, [(0, 0, 16, 16, 0, 0)])])),
        "delta-truncated-jpeg": bytes([0, LIMIT_64K]) + frame(2, key_frame(1, w, h))
        + frame(2, jmd(2, 1, w, h, [], [(1, JPEG_16[:-40], [(0, 0, 16, 16, 0, 0)])])),
        "delta-overlapping-rects": bytes([0, LIMIT_64K]) + frame(2, key_frame(1, w, h))
        + frame(2, jmd(2, 1, w, h, [], [(1, raw(8, 8), [(0, 0, 8, 8, 0, 0), (4, 4, 4, 4, 0, 0)])])),
        "delta-too-many-copies": bytes([0, LIMIT_64K]) + frame(2, key_frame(1, w, h))
        + frame(2, jmd(2, 1, w, h, [(0, 0, w, h, 0, 0)] * 2, [])),
        "delta-before-key-frame": bytes([0, 0]) + frame(2, jmd(2, 1, 8, 8, [], [])),
    }


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (out / name).write_bytes(data)
    for regression in sorted((HERE / "regressions").iterdir()):
        shutil.copyfile(regression, out / f"regression-{regression.name}")
    print(f"{len(list(out.iterdir()))} seeds in {out}")


if __name__ == "__main__":
    main()
