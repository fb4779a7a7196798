"""The streamer's aiohttp application: REST, Socket.IO, metrics and the web page."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from jiomosa import api, metrics, plainws, webapp
from jiomosa.appkeys import MANAGER, SETTINGS, STREAMS
from jiomosa.manager import SessionManager
from jiomosa.settings import Settings
from jiomosa.sio import StreamServer

log = logging.getLogger(__name__)


def build_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[_cors(settings), api.error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    manager = SessionManager(settings)
    streams = StreamServer(settings, manager)
    app[SETTINGS] = settings
    app[MANAGER] = manager
    app[STREAMS] = streams
    streams.attach(app)
    app.add_routes(api.routes)
    app.cleanup_ctx.append(_manager_ctx)
    app.on_shutdown.append(_on_shutdown)
    plainws.setup(app)  # after _on_shutdown: sessions close (and tell clients) first
    webapp.setup(app)
    return app


async def _manager_ctx(app: web.Application) -> AsyncIterator[None]:
    manager = app[MANAGER]
    collector = metrics.LiveCollector(manager.live_metrics)
    metrics.REGISTRY.register(collector)
    await manager.start()
    log.info("streamer ready (backend=%s, store=%s)", manager.settings.backend,
             manager.settings.store)
    try:
        yield
    finally:
        # Sessions first (their clients get session:closed), then the browsers' pool.
        await manager.stop()
        metrics.REGISTRY.unregister(collector)


async def _on_shutdown(app: web.Application) -> None:
    # Sessions are handed to the fleet or closed (their clients get session:closed) before
    # the sockets go.
    await app[MANAGER].shutdown()
    await app[STREAMS].shutdown()


def _cors(settings: Settings) -> Callable[..., Awaitable[web.StreamResponse]]:
    allowed = {o.strip() for o in settings.cors_origins.split(",") if o.strip()}

    @web.middleware
    async def cors(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
        # Socket.IO answers CORS itself.
        if request.path.startswith("/socket.io"):
            return await handler(request)
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin:
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if origin and ("*" in allowed or origin in allowed):
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, If-None-Match"
            response.headers["Access-Control-Expose-Headers"] = (
                "ETag, X-Frame-Seq, X-Frame-Width, X-Frame-Height, X-Frame-Timestamp")
        return response

    return cors
