"""URL policy: the REST layer refuses private targets, and the browser itself never fetches
them (redirects, images, iframes, fetch), with the trap server as the witness."""

from __future__ import annotations

import asyncio

import pytest
from helpers import Api, PageServer

BLOCKED_URLS = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f000001/",
    "http://localhost:5000/",
    "http://app.localhost/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://[fd00:ec2::254]/",
]


@pytest.mark.parametrize("url", BLOCKED_URLS)
async def test_rest_refuses_private_targets(api: Api, url: str) -> None:
    status, data = await api.call("POST", "/api/session/create", {"url": url})
    assert status == 400, data
    assert "private" in data["error"] or "reserved" in data["error"]


async def test_load_refuses_private_targets(api: Api, trap: PageServer) -> None:
    sid = (await api.create())["session_id"]
    status, data = await api.call("POST", f"/api/session/{sid}/load", {"url": trap.url("/")})
    assert status == 400 and "private" in data["error"]
    assert not trap.requests
    await api.close(sid)


async def test_redirect_to_loopback_is_blocked_in_the_browser(
        api: Api, pages: PageServer, trap: PageServer) -> None:
    sid = (await api.create())["session_id"]
    status, data = await api.call("POST", f"/api/session/{sid}/load",
                                  {"url": pages.url("/redirect-loopback")})
    assert status == 502 and "blocked" in data["error"], data
    assert not [r for r in trap.requests if "secret" in r]
    # A redirect to an allowed host is followed.
    status, data = await api.call("POST", f"/api/session/{sid}/load",
                                  {"url": pages.url("/redirect-ok")})
    assert status == 200 and data["page_info"]["title"] == "static"
    await api.close(sid)


async def test_subresources_to_private_addresses_are_blocked(
        api: Api, pages: PageServer, trap: PageServer) -> None:
    sid = (await api.create(url=pages.url("/private-subresources")))["session_id"]
    await asyncio.sleep(1.0)  # time for the img, iframe and fetch to be attempted
    assert await api.title(sid) == "subresources"
    assert not [r for r in trap.requests if "secret" in r], trap.requests
    await api.close(sid)
    async with api.http.get(api.base + "/metrics") as r:
        text = await r.text()
    blocked = [ln for ln in text.splitlines() if ln.startswith("jiomosa_blocked_requests_total")]
    assert blocked and float(blocked[0].split()[-1]) >= 3


async def test_popup_replaces_the_page(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/popup")))["session_id"]
    await api.call("POST", f"/api/session/{sid}/input/click", {"x": 100, "y": 100})
    await api.wait_title(sid, lambda t: t == "static")
    await api.close(sid)
