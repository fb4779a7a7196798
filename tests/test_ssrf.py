"""URL policy: the REST layer refuses private targets, and the browser itself never fetches
them (redirects, images, iframes, fetch), with the trap server as the witness."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from helpers import Api, PageServer, free_port
from netfixtures import LOCAL_NAT64_METADATA, LenientServer, loopback_address

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
    # IPv6 forms that embed a private IPv4 address, and special-purpose ranges (issue 10)
    "http://[64:ff9b:1::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[::ffff:0:169.254.169.254]/",
    "http://[::127.0.0.1]/",
    "http://[::a9fe:a9fe]/",
    "http://[2001::5601:5601]/",
    "http://192.0.2.2/",
    "http://198.51.100.1/",
    "http://203.0.113.1/",
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


async def test_page_websockets_to_private_addresses_are_blocked(
        api: Api, pages: PageServer) -> None:
    """Fetch does not see WebSockets; the egress proxy does. Same server, two addresses:
    reachable on the allowed 127.0.0.5, refused on 127.0.0.1."""
    hits: list[str] = []

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        hits.append(request.host)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port("127.0.0.5")
    for host in ("127.0.0.1", "127.0.0.5"):
        await web.TCPSite(runner, host, port).start()
    try:
        for host, outcome in (("127.0.0.1", "error"), ("127.0.0.5", "open")):
            pages.html(f"/ws-{host}", f"""<!doctype html><title>ws</title><script>
var s = new WebSocket("ws://{host}:{port}/ws");
s.onopen = function () {{ document.title = "open"; }};
s.onerror = function () {{ document.title = "error"; }};
</script>""")
            sid = (await api.create(url=pages.url(f"/ws-{host}")))["session_id"]
            assert await api.wait_title(sid, lambda t: t != "ws") == outcome, host
            await api.close(sid)
        assert hits == [f"127.0.0.5:{port}"]
    finally:
        await runner.cleanup()


async def test_fake_metadata_on_local_use_nat64_is_not_reached(
        api: Api, pages: PageServer) -> None:
    """The review's reproduction: a fake metadata server on 64:ff9b:1::a9fe:a9fe (added to lo)
    was loaded and its title came back in page_info. Neither a create nor a page's fetch,
    image or iframe may reach it. (The address carries 16 bits of this process's in the
    middle, so that concurrent test runs do not remove each other's.)"""
    address = LOCAL_NAT64_METADATA
    with loopback_address(address):
        metadata = await LenientServer("metadata").listen(address)
        try:
            url = metadata.url(address, "/latest/meta-data/")
            status, data = await api.call("POST", "/api/session/create", {"url": url})
            assert status == 400, data
            pages.html("/nat64", f"""<!doctype html><title>nat64</title>
<img src="{metadata.url(address, '/secret-img')}">
<iframe src="{metadata.url(address, '/secret-iframe')}"></iframe>
<script>fetch("{metadata.url(address, '/secret-fetch')}").then(
  function () {{ document.title = "reached"; }},
  function () {{ document.title = "blocked"; }});</script>""")
            sid = (await api.create(url=pages.url("/nat64")))["session_id"]
            assert await api.wait_title(sid, lambda t: t != "nat64") == "blocked"
            await api.close(sid)
        finally:
            await metadata.close()
    assert metadata.seen == []
