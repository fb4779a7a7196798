"""Delta frames in the reference C client (issue 14; clients/c built with ``make DELTA=1``).

Against a scripted server (the hostile one of test_c_fuzz.py): every picture the client writes
is the one the contract gives, computed here with Pillow from the same messages; a message
that fails a check (a rectangle outside the picture or the image, broken image data, a base
it does not hold) changes nothing it writes, makes it ask for a key frame and ignore updates
until one comes. Run plain and under ASan/UBSan. The libFuzzer harness built with the real
decoders goes over the delta seeds, then fuzzes briefly.

Against the real streamer: with ``-d`` the client rebuilds, after typing, a click and a
scroll, the picture the full-frame path shows (PSNR >= 38 dB), in a few MB of RAM.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ROOT, Api, PageServer
from PIL import Image, ImageChops
from test_c_fuzz import (
    HostileServer,
    build_variant,
    client_frames,
    hostile,
    upgrade_answer,
    ws_frame,
)
from test_c_fuzz import build as build_client

CLIENT_DIR = ROOT / "clients" / "c"
FUZZ_DIR = CLIENT_DIR / "fuzz"
RSS_LIMIT_KB = 8 * 1024  # as for full frames (test_c_client.py)
MIN_PSNR = 38.0

__all__ = ["hostile"]  # the fixture, shared with test_c_fuzz.py

Copy = tuple[int, int, int, int, int, int]  # sx, sy, w, h, dx, dy
Rect = tuple[int, int, int, int, int, int]  # x, y, w, h, ax, ay
JPEG, PNG = 1, 2


def build(out: Path, *args: str) -> Path:
    """make in clients/c with the delta decoder (DELTA=1)."""
    return build_client(out, "DELTA=1", *args)


@pytest.fixture(scope="module", params=["plain", "asan"])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_variant(tmp_path_factory.mktemp(f"c-delta-{request.param}"), request.param,
                         "DELTA=1")


# --------------------------------------------------------------------------- messages
def jmf(seq: int, image: Image.Image, *, key: bool = True, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return struct.pack(">3sBBBHIHHQ", b"JMF", 1, 24, quality, 1 if key else 0, seq,
                       image.width, image.height, int(time.time() * 1000)) + buf.getvalue()


def jmd(seq: int, base: int, size: tuple[int, int], copies: list[Copy],
        images: list[tuple[int, bytes, list[Rect]]]) -> bytes:
    out = struct.pack(">3sBHHIIHHQ", b"JMD", 1, 28, 0, seq, base, size[0], size[1],
                      int(time.time() * 1000))
    out += struct.pack(">H", len(copies)) + b"".join(struct.pack(">HHHHhh", *c) for c in copies)
    out += struct.pack(">H", len(images))
    for fmt, data, rects in images:
        out += struct.pack(">BH", fmt, len(rects))
        out += b"".join(struct.pack(">6H", *r) for r in rects)
        out += struct.pack(">I", len(data)) + data
    return out


def encoded(image: Image.Image, fmt: int) -> bytes:
    buf = io.BytesIO()
    if fmt == JPEG:
        image.save(buf, "JPEG", quality=85)
    else:
        image.save(buf, "PNG")
    return buf.getvalue()


def apply_reference(picture: Image.Image, copies: list[Copy],
                    images: list[tuple[int, bytes, list[Rect]]]) -> Image.Image:
    """The contract, with Pillow: copies from a snapshot, then every image's rectangles."""
    before, out = picture.copy(), picture.copy()
    for sx, sy, w, h, dx, dy in copies:
        out.paste(before.crop((sx, sy, sx + w, sy + h)), (sx + dx, sy + dy))
    for _fmt, data, rects in images:
        with Image.open(io.BytesIO(data)) as decoded:
            image = decoded.convert("RGB")
        for x, y, w, h, ax, ay in rects:
            out.paste(image.crop((ax, ay, ax + w, ay + h)), (x, y))
    return out


def decoded_jpeg(message: bytes) -> Image.Image:
    with Image.open(io.BytesIO(message[24:])) as image:
        return image.convert("RGB")


def max_difference(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size
    extrema = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getextrema()
    return max(int(band[1]) for band in extrema)  # type: ignore[index]


def psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    hist = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).histogram()
    squares = sum(count * (i % 256) ** 2 for i, count in enumerate(hist))
    mse = squares / (a.width * a.height * 3)
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def scene(size: tuple[int, int], seed: int) -> Image.Image:
    """A picture with structure (gradients and blocks), so that a misplaced copy shows."""
    w, h = size
    image = Image.new("RGB", size)
    image.putdata([((x * 5 + seed) % 256, (y * 7) % 256, ((x // 8 + y // 8) * 40 + seed) % 256)
                   for y in range(h) for x in range(w)])
    return image


# --------------------------------------------------------------------------- scripted server
def key_requests(server: HostileServer) -> int:
    """How many {"event":"frame:key"} the client sent on its (last) connection so far."""
    count = 0
    for op, payload in client_frames(bytes(server.received[-1])):
        try:
            count += op == 1 and json.loads(payload).get("event") == "frame:key"
        except ValueError:
            break  # a frame still arriving
    return count


def wait_key_requests(server: HostileServer, count: int) -> None:
    deadline = time.monotonic() + 15
    while key_requests(server) < count:
        assert time.monotonic() < deadline, f"the client never asked for key frame {count}"
        time.sleep(0.02)


def test_rebuilds_pictures_and_recovers_from_bad_updates(
        client: Path, hostile: Callable[..., HostileServer], tmp_path: Path) -> None:
    size = (96, 64)
    w, h = size
    expected: dict[int, Image.Image] = {}
    # 1: key frame. 2: a scroll by 16 rows, the new rows from a PNG. 3: two tiles packed in
    # one JPEG. 4: a rectangle outside the picture: rejected, a key frame is asked for.
    # 5: well-formed but based on 4, which the client does not hold: ignored.
    key1 = jmf(1, scene(size, 0))
    expected[1] = decoded_jpeg(key1)
    bottom = scene((w, 16), 99)
    d2 = ([(0, 16, w, h - 16, 0, -16)], [(PNG, encoded(bottom, PNG), [(0, h - 16, w, 16, 0, 0)])])
    expected[2] = apply_reference(expected[1], *d2)
    tiles = scene((32, 16), 50)
    d3: tuple[list[Copy], list[tuple[int, bytes, list[Rect]]]] = (
        [], [(JPEG, encoded(tiles, JPEG), [(8, 8, 16, 16, 0, 0), (40, 24, 16, 16, 16, 0)])])
    expected[3] = apply_reference(expected[2], *d3)
    bad4 = jmd(4, 3, size, [], [(PNG, encoded(tiles, PNG), [(90, 0, 16, 16, 0, 0)])])
    ignored5 = jmd(5, 4, size, [], [])
    # 6: the key frame asked for. 7: grey PNG tiles, and a copy that overlaps its source.
    # 8: a PNG whose compressed data is broken: the picture is dropped (nothing written),
    # a key frame asked for again; 9 (based on 8) is ignored. 10: key frame; 11: applies.
    key6 = jmf(6, scene(size, 30))
    expected[6] = decoded_jpeg(key6)
    grey = scene((16, 16), 7).convert("L")
    d7 = ([(0, 0, 40, 40, 8, 4)], [(PNG, encoded(grey, PNG), [(70, 40, 16, 16, 0, 0)])])
    expected[7] = apply_reference(expected[6], *d7)
    broken = bytearray(encoded(scene((16, 16), 3), PNG))
    idat = broken.index(b"IDAT")
    broken[idat + 10] ^= 0xFF  # inside the zlib stream: header reads, rows fail
    bad8 = jmd(8, 7, size, [], [(PNG, bytes(broken), [(0, 0, 16, 16, 0, 0)])])
    ignored9 = jmd(9, 8, size, [(0, 0, 8, 8, 8, 8)], [])
    key10 = jmf(10, scene(size, 60))
    expected[10] = decoded_jpeg(key10)
    d11 = ([(0, 8, w, h - 8, 0, -8)], [(JPEG, encoded(scene((w, 8), 5), JPEG),
                                         [(0, h - 8, w, 8, 0, 0)])])
    expected[11] = apply_reference(expected[10], *d11)

    server: HostileServer

    def script(conn: socket.socket, request: bytes) -> None:
        assert b"delta=1&formats=jpeg,png" in request.split(b"\r\n", 1)[0], request
        conn.sendall(upgrade_answer(request) + b"".join(
            ws_frame(2, m) for m in (key1, jmd(2, 1, size, *d2), jmd(3, 2, size, *d3), bad4,
                                     ignored5)))
        wait_key_requests(server, 1)
        conn.sendall(b"".join(ws_frame(2, m) for m in (
            key6, jmd(7, 6, size, *d7), bad8, ignored9)))
        wait_key_requests(server, 2)
        conn.sendall(ws_frame(2, key10) + ws_frame(2, jmd(11, 10, size, *d11))
                     + ws_frame(8, struct.pack(">H", 1000)))
        conn.shutdown(socket.SHUT_WR)

    server = hostile(script)
    out = tmp_path / "pictures"
    done = subprocess.run([str(client), "-s", server.base, "-S", "sess", "-d", "-o", str(out),
                           "-t", "60"], capture_output=True, text=True, errors="replace",
                          timeout=120)
    assert "Sanitizer" not in done.stderr and "runtime error" not in done.stderr, done.stderr
    server.wait(1)
    assert done.returncode == 0, done.stdout + done.stderr
    written = sorted(int(p.stem.split("-")[1]) for p in out.glob("frame-*.ppm"))
    assert written == sorted(expected), done.stdout
    for seq, picture in expected.items():
        with Image.open(out / f"frame-{seq:06d}.ppm") as got:
            assert got.size == size
            # The same libjpeg-turbo IDCT on both sides: equal, give or take rounding.
            assert max_difference(got, picture) <= 2, seq
    assert re.search(r"^rejected seq=4 reason=JMD image 0 rectangle 0 \(90,0 16x16\) leaves "
                     r"the 96x64 picture$", done.stdout, re.M), done.stdout
    assert re.search(r"^rejected seq=8 reason=PNG: ", done.stdout, re.M), done.stdout
    assert key_requests(server) == 2  # once per bad message, not once per ignored update
    assert re.search(r"^done frames=11 .* deltas=4 keys=3 rejected=2 ignored=2 peak_rss_kb=\d+$",
                     done.stdout, re.M), done.stdout


@pytest.mark.parametrize("name,message", [
    ("length beyond the message", lambda: jmd(2, 1, (32, 32), [], [(PNG, b"", [])])[:-4]
     + struct.pack(">I", 1 << 31)),
    ("copy leaving the picture", lambda: jmd(2, 1, (32, 32), [(0, 0, 16, 16, 17, 0)], [])),
    ("negative copy", lambda: jmd(2, 1, (32, 32), [(0, 0, 16, 16, 0, -1)], [])),
    ("rectangle outside the image",
     lambda: jmd(2, 1, (32, 32), [], [(PNG, encoded(scene((8, 8), 1), PNG),
                                       [(0, 0, 8, 8, 1, 1)])])),
    ("other picture size", lambda: jmd(2, 1, (32, 16), [], [])),
    ("webp, never asked for",
     lambda: jmd(2, 1, (32, 32), [], [(3, b"RIFF\0\0\0\0WEBP", [(0, 0, 4, 4, 0, 0)])])),
    ("trailing bytes", lambda: jmd(2, 1, (32, 32), [], []) + b"\0"),
    ("too many copies", lambda: jmd(2, 1, (32, 32), [(0, 0, 32, 32, 0, 0)] * 2, [])),
    ("not JPEG data", lambda: jmd(2, 1, (32, 32), [], [(JPEG, b"\xff\xd8garbage",
                                                       [(0, 0, 4, 4, 0, 0)])])),
])
def test_injected_update_changes_nothing(client: Path, hostile: Callable[..., HostileServer],
                                         tmp_path: Path, name: str,
                                         message: Callable[[], bytes]) -> None:
    """One bad update between a key frame and a good update: the good one is ignored (the
    client waits for its key frame), and the one picture written is the key frame's."""
    key = jmf(1, scene((32, 32), 9))
    good = jmd(3, 1, (32, 32), [(0, 0, 8, 8, 8, 8)], [])
    server = hostile(lambda conn, req: conn.sendall(
        upgrade_answer(req) + ws_frame(2, key) + ws_frame(2, message()) + ws_frame(2, good)
        + ws_frame(8, struct.pack(">H", 1000))))
    out = tmp_path / "pictures"
    done = subprocess.run([str(client), "-s", server.base, "-S", "sess", "-d", "-o", str(out),
                           "-l", "-t", "30"], capture_output=True, text=True, errors="replace",
                          timeout=60)
    assert "Sanitizer" not in done.stderr and "runtime error" not in done.stderr, done.stderr
    server.wait(1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^rejected seq=2 reason=.+$", done.stdout, re.M), done.stdout
    assert "deltas=0 keys=1 rejected=1 ignored=1" in done.stdout, done.stdout
    assert key_requests(server) == 1
    with Image.open(out / "latest.ppm") as got:
        assert max_difference(got, decoded_jpeg(key)) <= 2


def test_unusable_key_frame_is_asked_for_again(
        client: Path, hostile: Callable[..., HostileServer], tmp_path: Path) -> None:
    """The key frame that answers a request is broken: the client asks again at once (not
    after its retry interval: on a still page no update would come to remind it)."""
    size = (32, 32)
    key1, key4 = jmf(1, scene(size, 1)), jmf(4, scene(size, 4))
    broken3 = key1[:8] + struct.pack(">I", 3) + key1[12:24] + b"\xff\xd8" + bytes(60)
    server: HostileServer

    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(upgrade_answer(request) + ws_frame(2, key1)
                     + ws_frame(2, jmd(2, 9, size, [], [])))
        wait_key_requests(server, 1)
        conn.sendall(ws_frame(2, broken3))
        t0 = time.monotonic()
        wait_key_requests(server, 2)
        assert time.monotonic() - t0 < 1.5  # the retry interval is 2 s
        conn.sendall(ws_frame(2, key4) + ws_frame(8, struct.pack(">H", 1000)))

    server = hostile(script)
    out = tmp_path / "pictures"
    done = subprocess.run([str(client), "-s", server.base, "-S", "sess", "-d", "-o", str(out),
                           "-l", "-t", "30"], capture_output=True, text=True, errors="replace",
                          timeout=60)
    server.wait(1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deltas=0 keys=2 rejected=2 ignored=0" in done.stdout, done.stdout
    assert re.search(r"^rejected seq=3 reason=JPEG: ", done.stdout, re.M), done.stdout
    with Image.open(out / "latest.ppm") as got:
        assert max_difference(got, decoded_jpeg(key4)) <= 2


def test_plain_build_refuses_delta(tmp_path: Path) -> None:
    done = subprocess.run(["make", "-C", str(CLIENT_DIR), f"OUT={tmp_path}",
                           "EXTRA_CFLAGS=-Werror"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "-ljpeg" not in done.stdout  # the plain client links no image library
    run = subprocess.run([str(tmp_path / "jiomosa-client"), "-d", "-S", "x"],
                         capture_output=True, text=True, timeout=10)
    assert run.returncode == 1 and "make DELTA=1" in run.stderr


# --------------------------------------------------------------------------- fuzzing
@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("clang") is None:
        pytest.fail("clang is needed (Debian packages: clang libclang-rt-14-dev)")
    return build(tmp_path_factory.mktemp("cfuzz-delta"), "fuzz") / "fuzz" / "fuzz-client"


def test_fuzz_harness_with_real_decoders(fuzzer: Path, tmp_path: Path) -> None:
    """Every seed once (the delta ones reach every outcome: applied, rejected, broken, and
    the harness compares applied pictures with its own naive applier), then a short run."""
    seeds = tmp_path / "seeds"
    subprocess.run([sys.executable, str(FUZZ_DIR / "seeds.py"), str(seeds)], check=True,
                   capture_output=True)
    assert len(list(seeds.glob("delta-*"))) >= 10
    once = subprocess.run([str(fuzzer), "-runs=0", str(seeds)], capture_output=True, text=True,
                          timeout=120)
    assert once.returncode == 0, once.stderr[-3000:]
    done = subprocess.run([sys.executable, str(FUZZ_DIR / "run.py"), str(fuzzer),
                           str(tmp_path / "work"), "15"], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "crashes found: 0" in done.stdout, done.stdout
    print("\n" + done.stdout.strip())


# --------------------------------------------------------------------------- the streamer
# An input (its caret hidden: a blinking caret never lets the page settle), a counter
# button and a long text to scroll; the title says what happened.
DELTA_PAGE = """<!doctype html><html><head><title>delta</title></head>
<body style="margin:0;font:16px sans-serif">
<input id="t" style="position:absolute;left:10px;top:10px;width:300px;height:30px;
  font:20px sans-serif;caret-color:transparent">
<button id="b" style="position:absolute;left:10px;top:60px;width:120px;height:40px">+1</button>
<div id="c" style="position:absolute;left:150px;top:60px;font:30px sans-serif">0</div>
<div style="position:absolute;left:0;top:120px">""" + "".join(
    f"<p style='margin:4px 8px'>Line {i}: the quick brown fox jumps over the lazy dog "
    f"{i * 7}</p>" for i in range(200)) + """</div>
<script>
var n = 0, t = document.getElementById('t');
document.getElementById('b').onclick = function () { n++;
  document.getElementById('c').textContent = n; document.title = 'count:' + n; };
t.addEventListener('input', function () { document.title = 'text:' + t.value; });
addEventListener('scroll', function () { document.title = 'scroll:' + Math.round(scrollY); });
t.focus();
</script></body></html>"""


class ClientRun:
    """The C client with -d as a subprocess, its stdout lines collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    def seq(self) -> int:
        """The seq of the last picture written (its line comes after the file)."""
        for line in reversed(self.lines):
            if line.startswith(("frame ", "delta ")):
                return int(re.search(r"seq=(\d+)", line).group(1))  # type: ignore[union-attr]
        return -1

    async def reach(self, seq: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.seq() < seq:
            assert self.proc.returncode is None, "\n".join(self.lines[-20:])
            assert time.monotonic() < deadline, f"client at {self.seq()}, not {seq}"
            await asyncio.sleep(0.05)


async def settled_frame(api: Api, sid: str) -> tuple[int, bytes]:
    """The full frame (seq and JPEG) once the page stops repainting for 0.7 s."""
    seq, jpeg, deadline = 0, b"", time.monotonic() + 20
    while time.monotonic() < deadline:
        async with api.http.get(f"{api.base}/api/session/{sid}/frame",
                                params={"after": str(seq), "timeout": "0.7"}) as r:
            if r.status == 204 and jpeg:
                return seq, jpeg
            if r.status == 200:
                seq, jpeg = int(r.headers["X-Frame-Seq"]), await r.read()
    raise AssertionError("the page never stopped repainting")


@pytest.fixture(scope="module")
def delta_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("c-delta-real"), "EXTRA_CFLAGS=-Werror") / \
        "jiomosa-client"


async def test_rebuilt_picture_matches_full_frames(
        delta_client: Path, api: Api, pages: PageServer, tmp_path: Path) -> None:
    pages.html("/delta", DELTA_PAGE)
    sid = (await api.create(url=pages.url("/delta"), width=480, height=360))["session_id"]
    out = tmp_path / "pictures"
    run = ClientRun(await asyncio.create_subprocess_exec(
        str(delta_client), "-s", api.base, "-S", sid, "-d", "-o", str(out), "-l", "-t", "120",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE))
    compared: list[tuple[str, float]] = []

    async def compare(what: str) -> None:
        seq, jpeg = await settled_frame(api, sid)
        await run.reach(seq)
        with Image.open(io.BytesIO(jpeg)) as full, Image.open(out / "latest.ppm") as mine:
            value = psnr(full, mine)
        compared.append((what, value))
        assert value >= MIN_PSNR, (what, value, run.lines[-10:])

    try:
        await compare("loaded")
        for word in ("hello ", "delta ", "frames"):
            status, _ = await api.call("POST", f"/api/session/{sid}/input/text", {"text": word})
            assert status == 200
        await api.wait_title(sid, lambda t: t == "text:hello delta frames")
        await compare("typed")
        status, _ = await api.call("POST", f"/api/session/{sid}/input/click", {"x": 60, "y": 80})
        assert status == 200
        await api.wait_title(sid, lambda t: t == "count:1")
        await compare("clicked")
        for step in (1, 2, 3):
            status, _ = await api.call("POST", f"/api/session/{sid}/input/scroll",
                                       {"deltaX": 0, "deltaY": 80, "x": 240, "y": 200})
            assert status == 200
            await api.wait_title(sid, f"scroll:{step * 80}".__eq__)
            await compare(f"scrolled {step * 80}")
    finally:
        run.proc.terminate()
        await asyncio.wait_for(run.proc.wait(), 20)
        await run.reader
        await api.close(sid)
    stats = next(line for line in run.lines if line.startswith("done "))
    deltas = [line for line in run.lines if line.startswith("delta ")]
    assert deltas, run.lines[-20:]
    assert "rejected=0" in stats, run.lines
    rss = int(re.search(r"peak_rss_kb=(\d+)", stats).group(1))  # type: ignore[union-attr]
    assert rss < RSS_LIMIT_KB, stats
    print("\n" + ", ".join(f"{what}: {value:.1f} dB" for what, value in compared)
          + f"\n{len(deltas)} updates; {stats}")
