"""REST API: the original Jiomosa's paths and shapes, extended compatibly (docs/api.md)."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jiomosa import SERVICE_NAME, __version__, metrics
from jiomosa.appkeys import GUARD, MANAGER, SETTINGS
from jiomosa.core import validation as v
from jiomosa.core.errors import SessionError, client_error, status_of
from jiomosa.core.inputs import INPUT_TYPES
from jiomosa.core.types import MAX_QUALITY, MIN_QUALITY
from jiomosa.sessions.session import Session, Share

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

LONG_POLL_MAX = 30.0


def error(status: int, message: str, **extra: Any) -> web.Response:
    metrics.ERRORS.labels(str(status)).inc()
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes a JSON ``{"error": ...}`` with a 4xx/5xx; never a stack trace."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error(413, "request body is too large")
    except web.HTTPException as exc:
        if exc.empty_body or exc.status < 400:
            raise
        return error(exc.status, exc.reason)
    except Exception as exc:
        status, message, extra = status_of(exc)
        if client_error(exc) is None:
            log.exception("unhandled error on %s %s", request.method, request.path)
        elif status >= 500:
            log.warning("%s on %s: %s", status, request.path, exc)
        response = error(status, message, **extra)
        if "retry_after" in extra:  # an error that says when to try again (whole seconds)
            response.headers["Retry-After"] = str(extra["retry_after"])
        if status == 401:  # RFC 9110: a 401 names the scheme that would work
            response.headers["WWW-Authenticate"] = 'Bearer realm="jiomosa"'
        return response


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty)."""
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(settings.max_body_bytes, request.content_length)
    raw = await request.content.read(settings.max_body_bytes + 1)
    if len(raw) > settings.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(settings.max_body_bytes, len(raw))
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise v.BadRequest("body is not valid JSON") from None
    except RecursionError:  # json's C parser recurses once per nesting level
        raise v.BadRequest("body is nested too deeply") from None
    return v.as_object(data, "body")


async def session_of(request: web.Request) -> Session:
    return await request.app[MANAGER].lookup(request.match_info["session_id"])


def client_address(request: web.Request) -> str:
    """Who the request comes from, for the limits (``X-Forwarded-For`` only from a proxy
    listed in ``JIOMOSA_TRUSTED_PROXIES``)."""
    return request.app[GUARD].address(request.remote, request.headers.getall("X-Forwarded-For", []))


def public_base(request: web.Request) -> str:
    configured = request.app[SETTINGS].public_url
    if configured:
        return configured.rstrip("/")
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
    return f"{scheme}://{request.host}"


# ------------------------------------------------------------------- service
@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    return web.json_response({
        "status": "healthy",
        "service": SERVICE_NAME,
        "version": __version__,
        "active_sessions": manager.live_count(),
        "max_sessions": manager.settings.max_sessions,
        "warm_browsers": manager.provider.warm,
        "websocket": "enabled",
    })


@routes.get("/api/info")
async def info(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    return web.json_response({
        "service": SERVICE_NAME,
        "version": __version__,
        "description": "Cloud browser: Chrome renders in the cloud, devices get JPEG frames "
                       "and send taps, scrolls and keys.",
        "endpoints": {
            "health": "GET /health",
            "create_session": "POST /api/session/create",
            "load_url": "POST /api/session/{id}/load",
            "session_info": "GET /api/session/{id}/info",
            "keepalive": "POST /api/session/{id}/keepalive",
            "close_session": "POST|DELETE /api/session/{id}/close",
            "list_sessions": "GET /api/sessions",
            "input": "POST /api/session/{id}/input/{click|scroll|key|text}",
            "frame": "GET /api/session/{id}/frame",
            "stream": "GET /api/session/{id}/stream (plain WebSocket)",
            "share": "POST /api/session/{id}/share, DELETE /api/session/{id}/share/{token}",
            "shared_view": "GET /api/share/{info|frame|stream} with X-Share-Token or ?share=",
            "web_app": "GET /",
            "metrics": "GET /metrics",
            "openapi": "GET /api/openapi.json",
            "socketio": "/socket.io/",
        },
        "session_config": {
            "timeout": s.idle_timeout,
            "idle_timeout": s.idle_timeout,
            "max_duration": s.max_duration,
            "max_sessions": s.max_sessions,
            "default_viewport": {"width": s.default_width, "height": s.default_height},
        },
        "streaming": {
            "fps_range": [1, 60],
            "quality_range": [MIN_QUALITY, MAX_QUALITY],
            "default_fps": s.default_fps,
            "default_quality": s.default_quality,
            "frame_encodings": ["binary", "base64"],
            "default_frame_encoding": s.frame_encoding,
        },
    })


@routes.get("/metrics")
async def metrics_endpoint(_request: web.Request) -> web.Response:
    body = generate_latest(metrics.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/api/openapi.json")
async def openapi(_request: web.Request) -> web.Response:
    text = resources.files("jiomosa").joinpath("openapi.json").read_text("utf-8")
    return web.Response(text=text, content_type="application/json")


# ------------------------------------------------------------------- sessions
@routes.post("/api/session/create")
async def create_session(request: web.Request) -> web.Response:
    # Who may create, and how often, before anything else: a refused create costs nothing.
    quota = request.app[GUARD].admit_create(client_address(request),
                                            request.headers.get("Authorization"),
                                            request.headers.get("X-API-Key"))
    data = await read_json(request)
    settings = request.app[SETTINGS]
    proposed = v.string(data, "session_id", 128, required=False)
    url = v.string(data, "url", 8192, required=False)
    viewport = v.viewport(data, settings)
    session = await request.app[MANAGER].create(proposed, viewport, url or None, quota)
    if quota.tag.startswith("key:"):
        session.log.info("session created with %s", quota.label)  # the key's name, never it
    base = public_base(request)
    ws_base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return web.json_response({
        "success": True,
        "session_id": session.id,
        "created_at": session.created_at,
        "websocket_url": f"{ws_base}/socket.io/?session_id={session.id}",
        "viewport": viewport.to_dict(),
        "page_info": session.page_info_view(),
    }, status=201)


@routes.post("/api/session/{session_id}/load")
async def load(request: web.Request) -> web.Response:
    session = await session_of(request)
    data = await read_json(request)
    url = v.string(data, "url", 8192, required=False)
    if not url:
        raise v.BadRequest("URL is required")
    page_info = await session.load(url, request.app[SETTINGS].navigation_timeout)
    return web.json_response({"success": True, "message": f"Loaded {page_info['url']}",
                              "page_info": page_info})


@routes.get("/api/session/{session_id}/info")
async def session_info(request: web.Request) -> web.Response:
    session = await session_of(request)
    return web.json_response(await session.info())


@routes.post("/api/session/{session_id}/keepalive")
async def keepalive(request: web.Request) -> web.Response:
    session = await session_of(request)
    last_activity = await session.keepalive()
    return web.json_response({"success": True, "session_id": session.id,
                              "last_activity": last_activity,
                              "message": "Session kept alive"})


@routes.post("/api/session/{session_id}/close")
@routes.delete("/api/session/{session_id}/close")
async def close(request: web.Request) -> web.Response:
    session = await session_of(request)
    await request.app[MANAGER].close(session.id, "closed by client")
    return web.json_response({"success": True, "message": f"Session {session.id} closed"})


@routes.get("/api/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    """The original's session list. A session id is the key to a browser, so only a request
    with the admin token sees ids, pages and times, and the backend's own browsers (which
    cost an API call on some backends); everyone else gets the original's shape with nothing
    in it but each session's state: no id character, no page, no time."""
    admin = is_admin(request)
    sessions = await request.app[MANAGER].summaries(backend=admin)
    live = sum(1 for s in sessions if s["status"] in ("starting", "ready"))
    if not admin:
        sessions = [{"session_id": "", "created_at": 0, "last_activity": 0,
                     "current_page": "", "status": s["status"]} for s in sessions]
    return web.json_response({"active_sessions": live, "sessions": sessions,
                              "redacted": not admin})


def is_admin(request: web.Request) -> bool:
    token = request.app[SETTINGS].admin_token
    # aiohttp (like os.environ) decodes bytes that are not UTF-8 as surrogates: encode them
    # back the same way, so that any header compares as the bytes the client sent.
    offered = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    wanted = f"Bearer {token}".encode("utf-8", "surrogateescape")
    return bool(token) and hmac.compare_digest(offered, wanted)


@routes.post("/api/session/{session_id}/input/{kind}")
async def input_event(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind not in INPUT_TYPES:
        raise SessionError(f"unknown input type; use one of {', '.join(INPUT_TYPES)}", 404)
    session = await session_of(request)
    request.app[GUARD].admit_input(session.id)
    data = await read_json(request)
    ack = await session.input(kind, data)
    return web.json_response({"success": True, **ack})


@routes.get("/api/session/{session_id}/frame")
async def frame(request: web.Request) -> web.StreamResponse:
    """The latest screencast JPEG. ``?after=SEQ`` waits (``timeout`` s, at most 30) for a newer
    one; ``If-None-Match`` answers 304 when the client already has it."""
    session = await session_of(request)
    return await frame_response(request, session, session.id)


async def frame_response(request: web.Request, session: Session, shown_id: str
                         ) -> web.StreamResponse:
    """``frame``'s answer; ``shown_id``: the id the client may see (a share's, for a viewer)."""
    q = request.query
    try:
        after = int(q.get("after", "-1"))
        timeout = min(LONG_POLL_MAX, max(0.0, float(q.get("timeout", "25"))))
        quality = int(q.get("quality", str(MAX_QUALITY)))
    except ValueError:
        raise v.BadRequest("after, timeout and quality must be numbers") from None
    if not MIN_QUALITY <= quality <= MAX_QUALITY:
        raise v.BadRequest(f"quality must be between {MIN_QUALITY} and {MAX_QUALITY}")
    hub = session.hub
    if session.state == "failed":
        raise SessionError(f"session failed: {session.error}", 409)
    session.touch()
    if after >= 0:
        if after > (hub.latest.seq if hub.latest else 0):
            after = 0  # a seq from an earlier session of the same id: the current frame is new
        current = await hub.wait_newer(after, timeout)
        if current is None:
            if hub.closed:
                raise SessionError("session closed", 410)
            return web.Response(status=204, headers={"Cache-Control": "no-store"})
    else:
        current = hub.latest or await hub.wait_newer(0, 5.0)
        if current is None:
            raise SessionError("no frame yet", 503)
    quality = min(quality, current.quality)
    if quality < current.quality:
        # A client cycling through qualities would have every frame re-encoded at each: past
        # JIOMOSA_FRAME_QUALITIES it gets the nearest quality already in use (X-Frame-Quality).
        quality = request.app[GUARD].frame_quality(session.id, quality,
                                                   hub.encoded_qualities(current))
    etag = f'"{shown_id[:8]}-{current.seq}-{quality}"'
    headers = {
        "ETag": etag,
        "Cache-Control": "no-cache",
        "X-Frame-Seq": str(current.seq),
        "X-Frame-Width": str(current.width),
        "X-Frame-Height": str(current.height),
        "X-Frame-Timestamp": f"{current.timestamp:.3f}",
        "X-Frame-Quality": str(quality),
    }
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)  # before encoding: it is not sent
    image = await hub.image(current, quality)
    return web.Response(body=image, content_type="image/jpeg", headers=headers)


# ------------------------------------------------------------------- share links
# Knowing a session's id is owning it; a share link lets someone else watch it without ever
# learning the id, read-only unless the owner grants input (docs/protocol.md, *Sharing*).
@routes.post("/api/session/{session_id}/share")
async def create_share(request: web.Request) -> web.Response:
    session = await session_of(request)
    data = await read_json(request)
    allow_input = v.boolean(data, "input", False)
    share = await request.app[MANAGER].share(session, allow_input)
    return web.json_response({
        "success": True, "share_token": share.token, **share.view(),
        "url": f"{public_base(request)}/#share={share.token}",
    }, status=201)


@routes.get("/api/session/{session_id}/share")
async def list_shares(request: web.Request) -> web.Response:
    session = await session_of(request)
    return web.json_response({"shares": [s.view() for s in session.shares.values()]})


@routes.delete("/api/session/{session_id}/share/{key}")
async def revoke_share(request: web.Request) -> web.Response:
    """Revoke a share link (by its token or its share id): its viewers are cut off."""
    session = await session_of(request)
    share = await request.app[MANAGER].unshare(session, request.match_info["key"])
    return web.json_response({"success": True, "share_id": share.id,
                              "message": "Share link revoked"})


async def shared(request: web.Request) -> tuple[Session, Share]:
    """The session and share a viewer's request names: header ``X-Share-Token`` (preferred:
    kept out of URLs and logs) or query ``share``."""
    token = request.headers.get("X-Share-Token") or request.query.get("share")
    return await request.app[MANAGER].lookup_share(token)


@routes.get("/api/share/info")
async def share_info(request: web.Request) -> web.Response:
    session, share = await shared(request)
    return web.json_response(session.shared_view(share))


@routes.get("/api/share/frame")
async def share_frame(request: web.Request) -> web.StreamResponse:
    """``frame`` for a share link's viewer (polling clients); read-only."""
    session, share = await shared(request)
    return await frame_response(request, session, share.id)
