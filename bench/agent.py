"""Frames through a browser pod's agent against frames straight from Chromium.

Starts `jiomosa browser` (as in its pod) and a local Chromium with chromedriver (the streamer's
local mode), opens the animated test page in each through CDP (the agent's through its token-
guarded proxy) and counts screencast frames over the same window. Run with `make bench-agent`.
"""

from __future__ import annotations

import asyncio
import json
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import PAGE_HOST, TRAP_HOST, PageServer, build_pages
from test_agent import AgentProcess

from jiomosa.browser import driver
from jiomosa.browser.page import BrowserPage
from jiomosa.core.types import Viewport
from jiomosa.core.urlpolicy import UrlPolicy

WINDOW = 5.0
POLICY = UrlPolicy.from_allow_list([PAGE_HOST])


async def fps_of(page: BrowserPage, url: str) -> dict[str, float]:
    stamps: list[float] = []
    page.set_frame_callback(lambda _jpeg, _w, _h: stamps.append(time.monotonic()))
    await page.start_screencast(80)
    await page.navigate(url, 20)
    await asyncio.sleep(1.0)  # warm up
    start = time.monotonic()
    await asyncio.sleep(WINDOW)
    frames = sum(1 for t in stamps if start <= t < start + WINDOW)
    return {"fps": round(frames / WINDOW, 1)}


async def main() -> int:
    trap = PageServer(TRAP_HOST)
    pages = build_pages(trap)
    url = pages.url("/anim")
    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp), token=secrets.token_urlsafe(32))
        started = time.monotonic()
        agent.start()
        ready_s = time.monotonic() - started
        try:
            page = await BrowserPage.attach(await agent.browser_url(), POLICY,
                                            Viewport(1280, 720), token=agent.token)
            through_agent = await fps_of(page, url)
            await page.close()
        finally:
            agent.stop()
    local = await asyncio.to_thread(driver.start_local, "/usr/bin/chromium",
                                    "/usr/bin/chromedriver", 1280, 720)
    try:
        page = await BrowserPage.attach(local.endpoint.cdp_url, POLICY, Viewport(1280, 720))
        direct = await fps_of(page, url)
        await page.close()
    finally:
        await asyncio.to_thread(local.quit)
    pages.shutdown()
    trap.shutdown()
    result = {"agent": through_agent, "local": direct,
              "agent_process_start_to_ready_s": round(ready_s, 2)}
    print(json.dumps(result))
    print(f"\nmachine: {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| 1280x720 animated page | screencast fps |")
    print("|---|---|")
    print(f"| through the agent's CDP proxy (token) | {through_agent['fps']} |")
    print(f"| local mode (chromedriver, direct CDP) | {direct['fps']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
