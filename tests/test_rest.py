"""REST contract against a real streamer and a real Chromium."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
from helpers import ROOT, Api, PageServer, StreamerProcess, pixel

SESSION_PATHS = [
    ("POST", "/api/session/{}/load", {"url": "http://127.0.0.5/"}),
    ("GET", "/api/session/{}/info", None),
    ("POST", "/api/session/{}/keepalive", None),
    ("POST", "/api/session/{}/close", None),
    ("DELETE", "/api/session/{}/close", None),
    ("POST", "/api/session/{}/input/click", {"x": 1, "y": 1}),
    ("POST", "/api/session/{}/input/scroll", {"deltaX": 0, "deltaY": 10}),
    ("POST", "/api/session/{}/input/key", {"key": "Enter"}),
    ("POST", "/api/session/{}/input/text", {"text": "hi"}),
    ("GET", "/api/session/{}/frame", None),
]


async def test_health_and_info(api: Api) -> None:
    status, health = await api.call("GET", "/health")
    assert status == 200
    assert health["status"] == "healthy"
    assert health["websocket"] == "enabled"
    assert isinstance(health["active_sessions"], int)
    status, info = await api.call("GET", "/api/info")
    assert status == 200
    assert {"service", "version", "description", "endpoints", "session_config"} <= set(info)
    assert info["session_config"]["timeout"] > 0


async def test_create_returns_unguessable_ids(api: Api) -> None:
    a, b = await asyncio.gather(api.create(), api.create())
    for data in (a, b):
        assert data["success"] is True
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", data["session_id"])  # 192 bits
        assert isinstance(data["created_at"], float)
        assert data["websocket_url"].startswith("ws://")
    assert a["session_id"] != b["session_id"]
    await asyncio.gather(api.close(a["session_id"]), api.close(b["session_id"]))


async def test_client_chosen_id_and_duplicate(api: Api) -> None:
    created = await api.create(session_id="kaios-device-42")
    assert created["session_id"] == "kaios-device-42"
    status, data = await api.call("POST", "/api/session/create", {"session_id": "kaios-device-42"})
    assert status == 400
    assert data == {"error": "Session already exists", "session_id": "kaios-device-42"}
    status, data = await api.call("POST", "/api/session/create", {"session_id": "../../etc"})
    assert status == 400 and "session_id" in data["error"]
    await api.close("kaios-device-42")


async def test_create_with_url_and_viewport(api: Api, pages: PageServer) -> None:
    created = await api.create(url=pages.url("/static"), width=400, height=300,
                               deviceScaleFactor=2, mobile=True, userAgent="JiomosaTest/1.0")
    sid = created["session_id"]
    assert created["page_info"]["title"] == "static"
    assert created["viewport"] == {"width": 400, "height": 300, "deviceScaleFactor": 2.0,
                                   "mobile": True, "userAgent": "JiomosaTest/1.0"}
    async with api.http.get(f"{api.base}/api/session/{sid}/frame") as r:
        assert r.status == 200
        assert (r.headers["X-Frame-Width"], r.headers["X-Frame-Height"]) == ("800", "600")
    await api.close(sid)


async def test_load_info_keepalive_list_close(api: Api, pages: PageServer) -> None:
    sid = (await api.create())["session_id"]
    status, data = await api.call("POST", f"/api/session/{sid}/load", {})
    assert (status, data) == (400, {"error": "URL is required"})
    status, data = await api.call("POST", f"/api/session/{sid}/load", {"url": pages.url("/app")})
    assert status == 200 and data["success"] is True
    assert data["page_info"]["title"] == "app"
    assert data["page_info"]["url"] == pages.url("/app")
    assert data["page_info"]["session_id"] == sid
    assert data["page_info"]["window_size"] == {"width": 1280, "height": 720}

    status, info = await api.call("GET", f"/api/session/{sid}/info")
    assert status == 200
    assert info["session_id"] == sid and info["status"] == "ready"
    assert info["page_info"]["url"] == pages.url("/app")
    before = info["last_activity"]

    await asyncio.sleep(0.05)
    status, kept = await api.call("POST", f"/api/session/{sid}/keepalive")
    assert status == 200 and kept["success"] is True and kept["last_activity"] > before

    status, listing = await api.call("GET", "/api/sessions")
    assert status == 200
    mine = [s for s in listing["sessions"] if s["session_id"] == sid]
    assert mine and mine[0]["current_page"] == pages.url("/app")
    assert listing["active_sessions"] >= 1

    status, closed = await api.call("DELETE", f"/api/session/{sid}/close")
    assert status == 200 and closed["success"] is True
    status, _ = await api.call("GET", f"/api/session/{sid}/info")
    assert status == 404


async def test_unknown_session_is_404_everywhere(api: Api) -> None:
    for method, path, body in SESSION_PATHS:
        status, data = await api.call(method, path.format("no-such-session"), body)
        assert status == 404, (method, path, data)
        assert data == {"error": "Session not found"}


async def test_rest_input_reaches_the_page(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/app")))["session_id"]
    status, ack = await api.call("POST", f"/api/session/{sid}/input/click", {"x": 200, "y": 150})
    assert status == 200 and ack["success"] is True and ack["type"] == "click"
    await api.wait_title(sid, lambda t: t == "count:1")
    status, _ = await api.call("POST", f"/api/session/{sid}/input/text", {"text": "héllo"})
    assert status == 200
    await api.wait_title(sid, lambda t: t == "text:héllo")
    status, _ = await api.call("POST", f"/api/session/{sid}/input/key", {"key": "ArrowLeft"})
    assert status == 200
    await api.wait_title(sid, lambda t: t == "key:ArrowLeft")
    status, _ = await api.call("POST", f"/api/session/{sid}/input/scroll",
                               {"deltaX": 0, "deltaY": 400})
    assert status == 200
    await api.wait_title(sid, lambda t: t.startswith("scroll:") and int(t[7:]) > 0)
    await api.close(sid)


async def test_key_enter_submits_a_form(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/form")))["session_id"]
    await api.call("POST", f"/api/session/{sid}/input/text", {"text": "query"})
    status, _ = await api.call("POST", f"/api/session/{sid}/input/key", {"key": "Enter"})
    assert status == 200
    await api.wait_title(sid, lambda t: t == "submitted")
    _, info = await api.call("GET", f"/api/session/{sid}/info")
    assert info["page_info"]["url"].endswith("/submitted?q=query")
    await api.close(sid)


async def test_bad_input_gets_clear_errors(api: Api) -> None:
    sid = (await api.create())["session_id"]
    cases = [
        ("/input/click", {"x": "1", "y": 2}, 400, "x must be a number"),
        ("/input/click", {"x": True, "y": 2}, 400, "x must be a number"),
        ("/input/click", {"y": 2}, 400, "x is required"),
        ("/input/click", {"x": 5000, "y": 5}, 400, "outside"),
        ("/input/click", {"x": -1, "y": 5}, 400, "between"),
        ("/input/scroll", {"deltaY": "down"}, 400, "deltaY must be a number"),
        ("/input/key", {"key": "F13"}, 400, "unknown key"),
        ("/input/key", {"key": 13}, 400, "key must be a string"),
        ("/input/text", {"text": ""}, 400, "must not be empty"),
        ("/input/text", {"text": "x" * 5000}, 400, "longer than"),
        ("/input/text", {"text": ["a"]}, 400, "text must be a string"),
        ("/input/teleport", {}, 404, "unknown input type"),
        ("/load", {"url": 42}, 400, "url must be a string"),
        ("/load", {"url": "javascript:alert(1)"}, 400, "only http and https"),
        ("/load", {"url": "file:///etc/passwd"}, 400, "only http and https"),
        ("/load", {"url": "http://user:pw@example.com/"}, 400, "credentials"),
        ("/load", {"url": "http://exa mple.com/"}, 400, "whitespace"),
    ]
    for path, body, status, fragment in cases:
        got, data = await api.call("POST", f"/api/session/{sid}{path}", body)
        assert got == status, (path, body, data)
        assert set(data) == {"error"} and fragment in data["error"], (path, body, data)
    for raw, fragment in [(b"{not json", "not valid JSON"), (b"[1,2]", "must be a JSON object"),
                          (b'{"x": NaN, "y": 1}', "x must be between")]:
        got, data = await api.call("POST", f"/api/session/{sid}/input/click", raw=raw)
        assert got == 400 and fragment in data["error"], (raw, data)
    got, data = await api.call("POST", f"/api/session/{sid}/input/text",
                               raw=b'{"text": "' + b"a" * 200_000 + b'"}')
    assert got == 413 and "too large" in data["error"]
    for body in ({"width": "wide"}, {"width": 50}, {"deviceScaleFactor": 9},
                 {"mobile": "yes"}, {"viewport": [1]}, {"width": 3840, "height": 2160,
                                                        "deviceScaleFactor": 2}):
        got, data = await api.call("POST", "/api/session/create", body)
        assert got == 400 and "error" in data, (body, data)
    # The session survived all of that.
    status, info = await api.call("GET", f"/api/session/{sid}/info")
    assert status == 200 and info["status"] == "ready"
    await api.close(sid)


async def test_frame_endpoint_etag_and_long_poll(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/color")))["session_id"]
    url = f"{api.base}/api/session/{sid}/frame"
    async with api.http.get(url) as r:
        assert r.status == 200 and r.content_type == "image/jpeg"
        body = await r.read()
        assert body[:2] == b"\xff\xd8"
        etag, seq = r.headers["ETag"], int(r.headers["X-Frame-Seq"])
    assert pixel(body, 10, 10)[0] < 30, "load answered before the page was on screen"
    async with api.http.get(url, headers={"If-None-Match": etag}) as r:
        assert r.status == 304
    # Nothing changes on this page: a bounded long-poll answers 204.
    async with api.http.get(url, params={"after": str(seq), "timeout": "0.5"}) as r:
        assert r.status == 204
    # A click changes the picture: the long-poll returns the newer frame.
    poll = asyncio.ensure_future(api.http.get(url, params={"after": str(seq), "timeout": "10"}))
    await asyncio.sleep(0.2)
    await api.call("POST", f"/api/session/{sid}/input/click", {"x": 10, "y": 10})
    async with await poll as r:
        assert r.status == 200 and int(r.headers["X-Frame-Seq"]) > seq
    async with api.http.get(url, params={"after": "x"}) as r:
        assert r.status == 400
    async with api.http.get(url, params={"quality": "20"}) as r:
        small = await r.read()
        assert r.status == 200 and small[:2] == b"\xff\xd8"
    await api.close(sid)


async def test_openapi_served_and_kept_in_docs(api: Api) -> None:
    status, served = await api.call("GET", "/api/openapi.json")
    assert status == 200
    assert served["openapi"].startswith("3.")
    documented = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served == documented
    paths = set(served["paths"])
    for path in ("/health", "/api/info", "/api/session/create", "/api/sessions",
                 "/api/session/{session_id}/frame", "/api/session/{session_id}/input/{kind}"):
        assert path in paths


async def test_metrics_are_prometheus_text(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/app")))["session_id"]
    await api.call("POST", f"/api/session/{sid}/input/click", {"x": 200, "y": 150})
    async with api.http.get(api.base + "/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    for name in ("jiomosa_sessions_created_total", "jiomosa_frames_captured_total",
                 "jiomosa_input_latency_seconds_bucket", "jiomosa_clients_connected",
                 "jiomosa_client_fps_actual", "jiomosa_client_fps_target",
                 'jiomosa_sessions{state="ready"}'):
        assert name in text, name
    await api.close(sid)


async def test_errors_never_leak_internals(api: Api) -> None:
    async with api.http.get(api.base + "/no/such/path") as r:
        assert r.status == 404 and (await r.json()) == {"error": "Not Found"}
    async with api.http.put(api.base + "/api/session/create") as r:
        assert r.status == 405 and "error" in await r.json()


async def test_cors_preflight(api: Api) -> None:
    async with api.http.options(api.base + "/api/session/create",
                                headers={"Origin": "http://device.example",
                                         "Access-Control-Request-Method": "POST"}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_logs_are_json_with_session_ids(streamer: StreamerProcess) -> None:
    records = streamer.log_records()
    assert records, "the streamer wrote no JSON log lines"
    about_sessions = [r for r in records if "session" in r["msg"] and "created" in r["msg"]]
    assert about_sessions and all("session_id" in r for r in about_sessions)


async def test_web_page_served(api: Api) -> None:
    async with api.http.get(api.base + "/") as r:
        assert r.status == 200 and "Jiomosa" in await r.text()


def test_docs_exist() -> None:
    for name in ("api.md", "protocol.md", "configuration.md", "performance.md", "security.md"):
        assert (ROOT / "docs" / name).is_file(), name
    assert Path(ROOT / "README.md").read_text().count("make test") >= 1


async def test_concurrent_creates_respect_capacity(start_streamer: type[StreamerProcess]
                                                   ) -> None:
    proc = start_streamer({"JIOMOSA_MAX_SESSIONS": "1", "JIOMOSA_WARM_BROWSERS": "0"}).start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base)
        results = await asyncio.gather(*(api.call("POST", "/api/session/create", {})
                                         for _ in range(3)))
        statuses = sorted(s for s, _ in results)
        assert statuses == [201, 503, 503], results
        refused = next(d for s, d in results if s == 503)
        assert "capacity" in refused["error"] and refused["max_sessions"] == 1


async def test_session_list_is_redacted_without_the_admin_token(api: Api,
                                                              pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-admin-token"}):
        async with api.http.get(api.base + "/api/sessions", headers=headers) as r:
            listing = await r.json()
        assert r.status == 200 and listing["redacted"] is True
        # The original's shape (old clients parse it), nothing in it but states: no id
        # character, no page (not even its origin), no time.
        assert listing["active_sessions"] >= 1
        assert "ready" in [s["status"] for s in listing["sessions"]]
        for entry in listing["sessions"]:
            assert entry == {"session_id": "", "created_at": 0, "last_activity": 0,
                             "current_page": "", "status": entry["status"]}, entry
        assert str(pages.port) not in str(listing)
    status, listing = await api.call("GET", "/api/sessions")  # with the token
    assert status == 200
    assert listing["redacted"] is False and sid in [s["session_id"] for s in listing["sessions"]]
    await api.close(sid)
