"""Session life: idle timeout, max duration, crash detection, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
from helpers import Api, PageServer, SioProbe, StreamerProcess, cmdline, descendants


async def _wait_gone(api: Api, sid: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _ = await api.call("GET", f"/api/session/{sid}/info")
        if status == 404:
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {sid} still exists after {timeout}s")


async def test_idle_timeout_and_what_counts_as_activity(
        start_streamer: type[StreamerProcess], pages: PageServer) -> None:
    proc = start_streamer({"JIOMOSA_IDLE_TIMEOUT": "3", "JIOMOSA_WARM_BROWSERS": "0"}).start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base)
        watched = (await api.create(url=pages.url("/static")))["session_id"]
        async with SioProbe(proc.base) as probe:
            await probe.subscribe(watched)
            kept = (await api.create())["session_id"]
            idle = (await api.create())["session_id"]
            status, _ = await api.call("POST", f"/api/session/{kept}/keepalive")
            assert status == 200
            started = time.monotonic()
            # keepalive every second keeps `kept`; the subscriber keeps `watched`; `idle` goes.
            idle_gone = False
            while time.monotonic() - started < 5.0 or not idle_gone:
                assert time.monotonic() - started < 15, "an idle session outlived its timeout"
                status, _ = await api.call("POST", f"/api/session/{kept}/keepalive")
                assert status == 200
                status, _ = await api.call("GET", f"/api/session/{idle}/info")
                idle_gone = status == 404
                if idle_gone:
                    # Not reaped early either (3 s timeout, 1 s reaper period).
                    assert time.monotonic() - started >= 2.5
                await asyncio.sleep(0.5)
            for sid in (kept, watched):
                status, info = await api.call("GET", f"/api/session/{sid}/info")
                assert status == 200 and info["status"] == "ready", sid
        # Once the last subscriber leaves, the watched session goes idle too.
        gone = await _wait_gone(api, watched, 8.0)
        assert gone - started > 5.0
    records = proc.log_records()
    assert any(r.get("session_id") == idle and "idle timeout" in r["msg"] for r in records)


async def test_max_duration_closes_and_notifies(start_streamer: type[StreamerProcess],
                                                pages: PageServer) -> None:
    proc = start_streamer({"JIOMOSA_MAX_DURATION": "3", "JIOMOSA_WARM_BROWSERS": "0"}).start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base)
        sid = (await api.create(url=pages.url("/anim")))["session_id"]
        async with SioProbe(proc.base) as probe:
            await probe.subscribe(sid)
            closed = await probe.wait_for("session:closed", timeout=8.0)
            assert closed == {"session_id": sid, "reason": "max duration reached"}
        status, _ = await api.call("GET", f"/api/session/{sid}/info")
        assert status == 404


def _chromium_browsers(pid: int) -> list[int]:
    """Top-level Chromium processes (not renderers/GPU/zygotes) below ``pid``."""
    return [p for p in descendants(pid)
            if "chrom" in cmdline(p) and "--type=" not in cmdline(p)
            and "chromedriver" not in cmdline(p)]


async def test_crashed_browser_fails_the_session(start_streamer: type[StreamerProcess],
                                                 pages: PageServer) -> None:
    """With restarts off (JIOMOSA_CRASH_RESTARTS=0) a crash ends the session at once, as before
    crash recovery (tests/test_crash_recovery.py has the default)."""
    proc = start_streamer({"JIOMOSA_WARM_BROWSERS": "0", "JIOMOSA_CRASH_RESTARTS": "0"}).start()
    assert proc.proc is not None
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base)
        sid = (await api.create(url=pages.url("/static")))["session_id"]
        browsers = _chromium_browsers(proc.proc.pid)
        assert len(browsers) == 1, [cmdline(p) for p in browsers]
        async with SioProbe(proc.base) as probe:
            await probe.subscribe(sid)
            os.kill(browsers[0], signal.SIGKILL)
            closed = await probe.wait_for("session:closed", timeout=10.0)
            assert closed == {"session_id": sid, "reason": "failed"}
        status, info = await api.call("GET", f"/api/session/{sid}/info")
        assert status == 200 and info["status"] == "failed"
        assert "browser" in info["error"]
        status, data = await api.call("POST", f"/api/session/{sid}/input/click", {"x": 1, "y": 1})
        assert status == 409 and "failed" in data["error"]
        status, listing = await api.call("GET", "/api/sessions")
        assert [s["status"] for s in listing["sessions"] if s["session_id"] == sid] == ["failed"]
        # The service itself is fine: a new session works.
        fresh = (await api.create(url=pages.url("/static")))["session_id"]
        assert (await api.title(fresh)) == "static"
        status, _ = await api.call("POST", f"/api/session/{sid}/close")
        assert status == 200
        status, _ = await api.call("GET", f"/api/session/{sid}/info")
        assert status == 404


async def test_shutdown_closes_sessions_and_browsers(start_streamer: type[StreamerProcess],
                                                     pages: PageServer) -> None:
    proc = start_streamer({"JIOMOSA_WARM_BROWSERS": "1"}).start()
    assert proc.proc is not None
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base)
        sid = (await api.create(url=pages.url("/static")))["session_id"]
        async with SioProbe(proc.base) as probe:
            await probe.subscribe(sid)
            assert _chromium_browsers(proc.proc.pid)
            started = [p for p in descendants(proc.proc.pid) if "chrom" in cmdline(p)]
            proc.proc.send_signal(signal.SIGTERM)
            closed = await probe.wait_for("session:closed", timeout=15.0)
            assert closed["reason"] == "server shutdown"
    assert await asyncio.to_thread(proc.proc.wait, 20) == 0
    # Processes left behind would be re-parented, not gone: look them up by pid.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        await asyncio.sleep(0.1)
    assert not [p for p in started if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
