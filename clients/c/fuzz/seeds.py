#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_client.c: valid server streams of every kind the client
meets, plus the regression inputs in fuzz/regressions/ (copied, so one directory seeds a run).

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
