"""Crash recovery (issue #13): a session whose Chromium dies gets a new one under the same id.

Against a real streamer and real Chromium: the session's browser is found among the
streamer's processes (the one whose DevTools shows the session's page) and SIGKILLed. The same
Socket.IO client, without reconnecting, is told ``session:state recovering``, gets frames again
(numbered on) and the page it had; a crash loop ends the session with a ``failed: …`` reason.
The in-process tests at the end pin the races (close during a restart, a browser that is not
ours to replace) with the fakes of ``tests/fakes.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes import FakeBrowsers, FakeLease, settings
from helpers import ADMIN, Api, PageServer, SioProbe, StreamerProcess, cmdline, descendants

from jiomosa.core.errors import SessionError
from jiomosa.core.types import BrowserEndpoint, SessionState, Viewport
from jiomosa.core.urlpolicy import UrlPolicy
from jiomosa.providers.base import BrowserLease
from jiomosa.providers.kubernetes import KubeLease
from jiomosa.sessions.manager import SessionManager
from jiomosa.sessions.session import CrashLog, LocalSession, Session

BACK_WITHIN = 2.0  # seconds from SIGKILL to frames again (issue #13), with a warm browser


# ======================================================================= finding the browser
def _browsers(streamer_pid: int) -> list[int]:
    """Top-level Chromium processes (not renderers, GPU, zygotes) below the streamer."""
    return [p for p in descendants(streamer_pid)
            if "chrom" in cmdline(p) and "--type=" not in cmdline(p)
            and "chromedriver" not in cmdline(p)]


def _page_urls(browser_pid: int) -> list[str]:
    """The URLs of a browser's pages, from its own DevTools (its port is in the
    DevToolsActivePort file of its --user-data-dir)."""
    found = re.search(r"--user-data-dir=(\S+)", cmdline(browser_pid))
    if found is None:
        return []
    try:
        port = (Path(found.group(1)) / "DevToolsActivePort").read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
            return [str(t.get("url", "")) for t in json.load(r) if t.get("type") == "page"]
    except (OSError, ValueError, IndexError):
        return []


async def session_browser(streamer_pid: int, marker: str, timeout: float = 15.0) -> int:
    """The pid of the Chromium that shows a page whose URL holds ``marker``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _browsers(streamer_pid):
            urls = await asyncio.to_thread(_page_urls, pid)
            if any(marker in url for url in urls):
                return pid
        await asyncio.sleep(0.1)
    raise AssertionError(f"no browser shows a page with {marker!r}")


def _arrived(probe: SioProbe, event: str, predicate: Any) -> float:
    """When (monotonic) the first ``event`` matching ``predicate`` arrived."""
    return next(at for at, data in probe.events[event] if predicate(data))


def _streamer_pid(proc: StreamerProcess) -> int:
    assert proc.proc is not None
    return proc.proc.pid


def chromium_wrapper(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A Chromium for JIOMOSA_CHROMIUM that starts 2 s late once ``slow`` exists and not at all
    once ``broken`` exists: a restart the test can act during, or one that fails."""
    wrapper, slow, broken = tmp_path / "chromium", tmp_path / "slow", tmp_path / "broken"
    wrapper.write_text(f'#!/bin/sh\n[ -e "{broken}" ] && exit 1\n[ -e "{slow}" ] && sleep 2\n'
                       'exec /usr/bin/chromium "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, slow, broken


# ======================================================================= real streamer
async def test_a_killed_browser_comes_back_under_the_same_session(
        start_streamer: type[StreamerProcess], pages: PageServer) -> None:
    proc = start_streamer().start()  # the defaults: one warm browser, 3 restarts a minute
    marker = "m" + secrets.token_hex(6)
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base)
        sid = (await api.create(url=pages.url("/form")))["session_id"]
        async with SioProbe(proc.base) as probe:
            await probe.subscribe(sid)
            # The page moves on by itself (a form submit, no `load`): the session must know
            # where it is without asking the browser, which will be dead when it matters.
            await probe.emit("input:text", {"text": marker})
            await probe.wait_for("input:acknowledged", lambda a: a["type"] == "text")
            await probe.emit("input:key", {"key": "Enter"})
            browser = await session_browser(_streamer_pid(proc), f"/submitted?q={marker}")
            expected_url = pages.url(f"/submitted?q={marker}")
            await asyncio.sleep(0.5)  # the submitted page painted
            socket_id = probe.client.get_sid()
            seen = len(probe.frames())
            last_seq = probe.frames()[-1]["seq"]

            killed = time.monotonic()
            os.kill(browser, signal.SIGKILL)

            state = await probe.wait_for("session:state", timeout=5.0)
            assert state == {"session_id": sid, "state": "recovering"}
            frame = await probe.wait_for("frame", lambda f: f["seq"] > last_seq, timeout=10.0,
                                         start=seen)
            back = _arrived(probe, "frame", lambda f: f["seq"] > last_seq) - killed
            print(f"\nframes again {back:.2f} s after SIGKILL of the session's Chromium "
                  f"(warm pool)")
            await probe.wait_for("session:state", lambda s: s["state"] == "ready")
            assert back < BACK_WITHIN, f"frames came back only {back:.2f} s after the kill"
            # The same socket, never closed nor reconnected, on the same session.
            assert "session:closed" not in probe.events and "disconnect" not in probe.events
            assert probe.client.connected and probe.client.get_sid() == socket_id
            assert frame["session_id"] == sid
            assert frame["width"] == 1280 and frame["height"] == 720  # the same viewport
            seqs = [f["seq"] for f in probe.frames()]
            assert seqs == sorted(set(seqs)), "frame numbers must go on, never repeat"
            assert [s["state"] for s in (d for _, d in probe.events["session:state"])] == [
                "recovering", "ready"]

            # The page it had (not the create URL), in another Chromium.
            status, info = await api.call("GET", f"/api/session/{sid}/info")
            assert status == 200 and info["status"] == "ready", info
            assert info["page_info"]["url"] == expected_url
            assert info["page_info"]["title"] == "submitted"
            assert info["subscribers"] == 1 and "error" not in info
            again = await session_browser(_streamer_pid(proc), f"/submitted?q={marker}")
            assert again != browser

            # Input works again, on the socket and over REST.
            await probe.emit("input:click", {"x": 10, "y": 10})
            ack = await probe.wait_for("input:acknowledged", lambda a: a["type"] == "click")
            assert ack["session_id"] == sid
            status, _ = await api.call("POST", f"/api/session/{sid}/input/key", {"key": "Tab"})
            assert status == 200
        status, listing = await api.call("GET", "/api/sessions")
        assert [s["status"] for s in listing["sessions"] if s["session_id"] == sid] == ["ready"]
        await api.close(sid)
    assert any(r.get("session_id") == sid and "browser restarted" in r["msg"]
               for r in proc.log_records())


async def test_while_the_browser_restarts_input_waits_and_streams_go_on(
        start_streamer: type[StreamerProcess], pages: PageServer, tmp_path: Path) -> None:
    """No warm browser, and the next Chromium boots 2 s late: a window to act in."""
    wrapper, slow, _ = chromium_wrapper(tmp_path)
    proc = start_streamer({"JIOMOSA_WARM_BROWSERS": "0",
                           "JIOMOSA_CHROMIUM": str(wrapper)}).start()
    marker = "m" + secrets.token_hex(6)
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base)
        sid = (await api.create(url=pages.url(f"/static?{marker}")))["session_id"]
        browser = await session_browser(_streamer_pid(proc), marker)
        async with SioProbe(proc.base) as probe, SioProbe(proc.base) as late:
            await probe.subscribe(sid)
            last_seq = probe.frames()[-1]["seq"]
            slow.touch()
            killed = time.monotonic()
            os.kill(browser, signal.SIGKILL)
            await probe.wait_for("session:state", lambda s: s["state"] == "recovering")

            await probe.emit("input:click", {"x": 10, "y": 10})
            error = await probe.wait_for("error")
            assert error["message"] == "the browser is restarting"
            assert error["event"] == "input:click" and error.get("retry_after", 1) == 1
            async with http.post(f"{proc.base}/api/session/{sid}/input/click",
                                 json={"x": 10, "y": 10}, headers=ADMIN) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert (await r.json())["error"] == "the browser is restarting"
            status, info = await api.call("GET", f"/api/session/{sid}/info")
            assert status == 200 and info["status"] == "recovering", info
            assert info["page_info"]["url"] == pages.url(f"/static?{marker}")
            # A client that (re)subscribes meanwhile gets the last picture at once.
            first = await late.subscribe(sid)
            assert first["seq"] == last_seq

            await probe.wait_for("frame", lambda f: f["seq"] > last_seq, timeout=15.0)
            back = _arrived(probe, "frame", lambda f: f["seq"] > last_seq) - killed
            print(f"\nframes again {back:.2f} s after SIGKILL (a cold start slowed by 2 s)")
            await late.wait_for("frame", lambda f: f["seq"] > last_seq)
            await late.wait_for("session:state", lambda s: s["state"] == "ready")
            await probe.emit("input:click", {"x": 10, "y": 10})
            await probe.wait_for("input:acknowledged")
        await api.close(sid)


async def test_a_crash_loop_ends_the_session(start_streamer: type[StreamerProcess],
                                             pages: PageServer) -> None:
    proc = start_streamer().start()  # JIOMOSA_CRASH_RESTARTS=3 in JIOMOSA_CRASH_WINDOW=60
    marker = "m" + secrets.token_hex(6)
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base)
        sid = (await api.create(url=pages.url(f"/static?{marker}")))["session_id"]
        async with SioProbe(proc.base) as probe:
            await probe.subscribe(sid)
            started = time.monotonic()
            for restart in range(1, 4):
                os.kill(await session_browser(_streamer_pid(proc), marker), signal.SIGKILL)
                await probe.wait_for("session:state", lambda s: s["state"] == "ready",
                                     timeout=15.0, start=2 * (restart - 1))
            assert "session:closed" not in probe.events
            os.kill(await session_browser(_streamer_pid(proc), marker), signal.SIGKILL)
            closed = await probe.wait_for("session:closed", timeout=10.0)
            print(f"\ncrash loop: 4 kills in {time.monotonic() - started:.1f} s -> {closed}")
        assert closed["session_id"] == sid
        assert re.fullmatch(r"failed: the browser crashed 4 times in \d+ s", closed["reason"])
        status, info = await api.call("GET", f"/api/session/{sid}/info")
        assert status == 200 and info["status"] == "failed"
        assert "crashed 4 times" in info["error"]
        status, data = await api.call("POST", f"/api/session/{sid}/input/click", {"x": 1, "y": 1})
        assert status == 409 and "failed" in data["error"]
        # Its last browser was quit, not restarted once more.
        await asyncio.sleep(1.0)
        assert not [p for p in _browsers(_streamer_pid(proc))
                    if any(marker in u for u in _page_urls(p))]


async def test_when_no_browser_can_be_started_the_session_ends(
        start_streamer: type[StreamerProcess], pages: PageServer, tmp_path: Path) -> None:
    """A recovery that fails itself: Chromium starts no more."""
    wrapper, _, broken = chromium_wrapper(tmp_path)
    proc = start_streamer({"JIOMOSA_WARM_BROWSERS": "0", "JIOMOSA_CHROMIUM": str(wrapper),
                           "JIOMOSA_BROWSER_START_TIMEOUT": "20"}).start()
    marker = "m" + secrets.token_hex(6)
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base)
        sid = (await api.create(url=pages.url(f"/static?{marker}")))["session_id"]
        browser = await session_browser(_streamer_pid(proc), marker)
        async with SioProbe(proc.base) as probe:
            await probe.subscribe(sid)
            broken.touch()
            os.kill(browser, signal.SIGKILL)
            closed = await probe.wait_for("session:closed", timeout=30.0)
            assert closed == {"session_id": sid,
                              "reason": "failed: the browser could not be restarted"}
            assert [d["state"] for _, d in probe.events["session:state"]] == ["recovering"]
        status, info = await api.call("GET", f"/api/session/{sid}/info")
        assert status == 200 and info["status"] == "failed"
        assert "could not be restarted" in info["error"]


# ======================================================================= in process
def test_crash_log_tells_a_crash_loop_from_one_offs() -> None:
    log = CrashLog()
    assert [log.note(t, restarts=3, window=60) for t in (0, 1, 2)] == [None, None, None]
    assert log.note(3.4, restarts=3, window=60) == "failed: the browser crashed 4 times in 4 s"
    spaced = CrashLog()  # one crash every 25 s: never more than 3 within a minute
    assert all(spaced.note(25.0 * i, restarts=3, window=60) is None for i in range(10))
    assert CrashLog().note(0, restarts=0, window=60) == "failed"  # restarts off


class GatedBrowsers(FakeBrowsers):
    """``acquire`` waits for ``gate`` once ``hold`` is set (``waiting`` tells it waits)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def acquire(self, width: int, height: int, scale: float = 1.0) -> BrowserLease:
        if self.hold:
            self.waiting.set()
            await self.gate.wait()
        return await super().acquire(width, height, scale)


class LentLease(FakeLease):
    """A browser the backend only lends (a kubectl-made BrowserSession)."""

    @property
    def replaceable(self) -> bool:
        return False


class LendingBrowsers(FakeBrowsers):
    async def acquire(self, width: int, height: int, scale: float = 1.0) -> BrowserLease:
        lease = await super().acquire(width, height, scale)
        return LentLease(lease.endpoint, self)


async def _manager(browsers: FakeBrowsers, **overrides: Any
                   ) -> tuple[SessionManager, list[tuple[str, str]]]:
    manager = SessionManager(settings(**overrides), browsers, UrlPolicy.from_allow_list([]),
                             browsers.attach, "s1")
    told: list[tuple[str, str]] = []

    async def state(session: Session, value: str) -> None:
        told.append(("state", value))

    async def closed(session: Session, reason: str) -> None:
        told.append(("closed", reason))

    manager.on_state(state)
    manager.on_closed(closed)
    await manager.start()
    return manager, told


async def _until(predicate: Any, what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        await asyncio.sleep(0.002)


async def test_the_new_browser_opens_the_page_the_old_one_last_showed() -> None:
    fb = FakeBrowsers()
    manager, told = await _manager(fb)
    try:
        session = await manager.create(None, Viewport(320, 240), "http://93.184.216.34/")
        old = fb.page_of(session)
        old.follow("http://93.184.216.34/elsewhere")  # a link, not a load
        old.follow("chrome-error://chromewebdata/")  # then an error page: not worth reopening
        last = session.hub.latest
        assert last is not None
        old.crash("browser connection closed")
        assert session.state == SessionState.RECOVERING and session.page is None
        with pytest.raises(SessionError) as caught:
            await session.input("click", {"x": 1, "y": 1})
        assert caught.value.status == 503 and caught.value.extra == {"retry_after": 1}
        await _until(lambda: session.state == SessionState.READY, "recovered")
        new = fb.page_of(session)
        assert new is not old and old.browser.quit and old.closed
        assert new.browser.url == "http://93.184.216.34/elsewhere"
        assert session.hub.latest is not None and session.hub.latest.seq > last.seq
        assert told == [("state", "recovering"), ("state", "ready")]
        await session.input("click", {"x": 1, "y": 1})
        assert new.browser.inputs == [("click", (1.0, 1.0))]
    finally:
        await manager.stop()


async def test_closing_a_session_while_its_browser_restarts_leaves_no_browser() -> None:
    fb = GatedBrowsers()
    manager, told = await _manager(fb)
    try:
        session = await manager.create("gone-while-restarting", Viewport(320, 240), None)
        fb.hold = True
        fb.page_of(session).crash("crashed")
        await asyncio.wait_for(fb.waiting.wait(), 2.0)
        assert await manager.close(session.id)
        fb.gate.set()
        await _until(lambda: all(b.quit for b in fb.by_url.values()) and len(fb.by_url) == 2,
                     "every browser quit")
        assert session.state == SessionState.CLOSED and session.page is None
        assert told == [("state", "recovering"), ("closed", "closed by client")]
    finally:
        await manager.stop()


async def test_a_lent_browser_is_not_replaced_and_restarts_can_be_off() -> None:
    for browsers, overrides in ((LendingBrowsers(), {}), (FakeBrowsers(), {"crash_restarts": 0})):
        manager, told = await _manager(browsers, **overrides)
        try:
            session: LocalSession = await manager.create(None, Viewport(320, 240), None)
            browsers.page_of(session).crash("crashed")
            assert session.state == SessionState.FAILED and session.error == "browser crashed"
            await _until(lambda: told == [("closed", "failed")], "the old close")  # noqa: B023
            assert len(browsers.by_url) == 1  # nothing was started instead
        finally:
            await manager.stop()
    # What the Kubernetes backend lends: a kubectl-made BrowserSession stays its maker's.
    endpoint = BrowserEndpoint("kubernetes", "ws://pod")
    assert not KubeLease(endpoint, owned=False).replaceable
    assert KubeLease(endpoint, owned=True).replaceable
    assert KubeLease(endpoint).replaceable  # adopted: the resource's label decides on release
