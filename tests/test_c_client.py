"""The reference C device client (clients/c), built with make and run against the real
streamer: it creates a session, streams over the plain WebSocket path, writes frames to disk,
clicks, and stays within a few MB of RAM while streaming full-size frames."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from helpers import ADMIN, ROOT, Api, PageServer, StreamerProcess, pixel
from PIL import Image

CLIENT_DIR = ROOT / "clients" / "c"
RSS_LIMIT_KB = 8 * 1024  # "a few MB": the device has 512 MB and much else to do


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("make") is None or shutil.which("cc") is None:
        pytest.fail("make and a C compiler are needed (Debian packages: make gcc libc6-dev)")
    out = tmp_path_factory.mktemp("c-client")
    build = subprocess.run(["make", "-C", str(CLIENT_DIR), f"OUT={out}", "EXTRA_CFLAGS=-Werror"],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    binary = out / "jiomosa-client"
    assert binary.is_file()
    return binary


def frame_lines(stdout: str) -> list[dict[str, int]]:
    return [{k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
            for line in stdout.splitlines() if line.startswith("frame ")]


def peak_rss(stdout: str) -> int:
    done = re.search(r"^done frames=(\d+) .*peak_rss_kb=(\d+)$", stdout, re.M)
    assert done, stdout[-500:]
    return int(done.group(2))


async def settle(api: Api, sid: str) -> None:
    """Return once the page has stopped repainting (a long-poll that times out)."""
    seq, deadline = 0, time.monotonic() + 15
    while time.monotonic() < deadline:
        async with api.http.get(f"{api.base}/api/session/{sid}/frame",
                                params={"after": str(seq), "timeout": "0.7"}) as r:
            if r.status == 204:
                return
            seq = int(r.headers["X-Frame-Seq"])
    raise AssertionError("the page never stopped repainting")


async def test_streams_saves_and_clicks(
        client: Path, api: Api, pages: PageServer, tmp_path: Path) -> None:
    session_id = (await api.create(url=pages.url("/color"), width=320, height=240))["session_id"]
    await settle(api, session_id)  # so that the second frame is the click's
    out = tmp_path / "frames"
    proc = await asyncio.create_subprocess_exec(
        str(client), "-s", api.base, "-S", session_id, "-o", str(out), "-n", "2",
        "-c", "10,10", "-t", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout_b, stderr_b = await asyncio.wait_for(proc.communicate(), 60)
    stdout, stderr = stdout_b.decode(), stderr_b.decode()
    assert proc.returncode == 0, stdout + stderr
    # The click was acknowledged (with the id the client gave it) and reached the page.
    assert re.search(r'^event \{"event":"input:acknowledged".*"type":"click".*"id":1\}$',
                     stdout, re.M), stdout
    await api.wait_title(session_id, lambda t: t == "clicks:1")
    # Each frame line matches a file on disk: a whole JPEG of the size in its header.
    frames = frame_lines(stdout)
    assert len(frames) == 2 and frames[0]["seq"] < frames[1]["seq"]
    for f in frames:
        data = (out / f"frame-{f['seq']:06d}.jpg").read_bytes()
        assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9" and len(data) == f["bytes"]
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (f["width"], f["height"]) == (320, 240)
        assert 10 <= f["quality"] <= 90
    # Black before the click, white after: the stream shows the page's reaction.
    first, last = (out / f"frame-{f['seq']:06d}.jpg" for f in frames)
    assert pixel(first.read_bytes(), 10, 10)[0] < 30
    assert pixel(last.read_bytes(), 10, 10)[0] > 220
    # A session the client did not create stays open.
    status, _ = await api.call("GET", f"/api/session/{session_id}/info")
    assert status == 200
    await api.close(session_id)


def test_peak_rss_while_streaming_full_frames(
        client: Path, streamer: StreamerProcess, pages: PageServer, tmp_path: Path) -> None:
    """1280x720 frames of random noise (~0.6 MB each, the worst case) for 60 frames."""
    proc = subprocess.Popen(
        [str(client), "-s", streamer.base, "-o", str(tmp_path), "-l", "-n", "60", "-t", "60",
         pages.url("/noise")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampled = 0  # VmHWM seen from outside while it streams
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        hwm = re.search(r"VmHWM:\s+(\d+)", status)
        sampled = max(sampled, int(hwm.group(1)) if hwm else 0)
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stdout[-500:] + stderr
    frames = frame_lines(stdout)
    assert len(frames) == 60 and all(f["width"] == 1280 for f in frames)
    biggest = max(f["bytes"] for f in frames)
    assert biggest > 300_000, "the noise page should give large frames"
    reported = peak_rss(stdout)
    assert 0 < sampled <= reported + 64 and reported < RSS_LIMIT_KB, (sampled, reported)
    latest = (tmp_path / "latest.jpg").read_bytes()
    assert latest[:2] == b"\xff\xd8" and len(latest) == frames[-1]["bytes"]
    print(f"\nC client peak RSS {reported} KB streaming {len(frames)} frames of up to "
          f"{biggest // 1024} KB")
    # The client created its session (with the page) and closed it at exit.
    session_id = re.search(r"^session (\S+)$", stdout, re.M)
    assert session_id
    listed = requests.get(f"{streamer.base}/api/sessions", headers=ADMIN,
                          timeout=10).json()["sessions"]
    assert session_id.group(1) not in {s["session_id"] for s in listed}

async def test_refused_and_ended_sessions(client: Path, api: Api, pages: PageServer) -> None:
    refused = await asyncio.create_subprocess_exec(
        str(client), "-s", api.base, "-S", "no-such-session", "-n", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(refused.communicate(), 30)
    assert refused.returncode == 2
    assert "HTTP 404" in err.decode() and "Session not found" in err.decode()

    sid = (await api.create(url=pages.url("/static")))["session_id"]
    proc = await asyncio.create_subprocess_exec(
        str(client), "-s", api.base, "-S", sid, "-t", "60",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    while not line.startswith(b"frame "):
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
    t0 = time.monotonic()
    await api.close(sid)
    rest_b, err_b = await asyncio.wait_for(proc.communicate(), 20)
    rest = rest_b.decode()
    assert proc.returncode == 0, rest + err_b.decode()
    assert f'"event":"session:closed","data":{{"session_id":"{sid}","reason":"closed by client"}}' \
        in rest
    assert "closed code=1000 reason=session closed" in rest
    assert time.monotonic() - t0 < 10
