"""The composition root: the streamer's aiohttp application, assembled from its parts.

Only here are the parts chosen: the browser provider (``JIOMOSA_BACKEND``), the egress proxy
local browsers must use, and the session manager: the single-host one, or the fleet's
(``JIOMOSA_STORE=redis``), which plugs Redis, the relay and hand-off in from outside.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from jiomosa import metrics
from jiomosa.appkeys import GUARD, MANAGER, SETTINGS
from jiomosa.browser.egress import EgressProxy
from jiomosa.browser.page import BrowserPage
from jiomosa.core import dns, executors
from jiomosa.core.guard import Guard
from jiomosa.core.settings import Settings
from jiomosa.core.types import BrowserEndpoint, Viewport
from jiomosa.core.urlpolicy import UrlPolicy
from jiomosa.providers.base import BrowserProvider
from jiomosa.providers.pooled import PooledProvider
from jiomosa.sessions.manager import SessionManager
from jiomosa.transports import rest, webapp
from jiomosa.transports.plainws import PATH as PLAIN_WS_PATH
from jiomosa.transports.plainws import SHARED_PATH as SHARED_WS_PATH
from jiomosa.transports.plainws import PlainStreams
from jiomosa.transports.sio import StreamServer

log = logging.getLogger(__name__)

STREAMS = web.AppKey("streams", StreamServer)
PLAIN_STREAMS = web.AppKey("plain_streams", PlainStreams)
EGRESS = web.AppKey("egress", EgressProxy)


def make_provider(settings: Settings, in_use: Callable[[], int]) -> BrowserProvider:
    """The provider of ``settings.backend``."""
    if settings.backend == "kubernetes":
        from jiomosa.providers.kubernetes import KubernetesProvider

        return KubernetesProvider(settings)
    return PooledProvider(settings, in_use)


async def attach_page(endpoint: BrowserEndpoint, policy: UrlPolicy,
                      viewport: Viewport) -> BrowserPage:
    """A session's page over CDP; a browser pod's agent is given its bearer token."""
    return await BrowserPage.attach(endpoint.cdp_url, policy, viewport,
                                    token=endpoint.cdp_token)


def make_manager(settings: Settings) -> SessionManager:
    """The single-host session manager, or the fleet's when the store is Redis."""
    policy = UrlPolicy.from_allow_list(settings.allow_hosts)
    streamer_id = settings.streamer_id or f"{socket.gethostname()}-{secrets.token_hex(3)}"

    def in_use() -> int:
        return len(manager.sessions)

    provider = make_provider(settings, in_use)
    manager: SessionManager
    if settings.store == "redis":
        from jiomosa.fleet.coordinator import FleetManager
        from jiomosa.fleet.redis_store import RedisStore
        from jiomosa.fleet.relay import RelayBus

        manager = FleetManager(settings, provider, policy, attach_page,
                               RedisStore(settings.redis_url),
                               RelayBus(settings.redis_url, streamer_id), streamer_id)
    else:
        manager = SessionManager(settings, provider, policy, attach_page, streamer_id)
    return manager


def build_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[_cors(settings), rest.error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    manager = make_manager(settings)
    guard = Guard(settings)  # the abuse limits (issue #13), shared by every transport
    streams = StreamServer(settings, manager, guard)
    plain = PlainStreams(settings, manager, guard)
    app[SETTINGS] = settings
    app[MANAGER] = manager
    app[GUARD] = guard
    app[STREAMS] = streams
    app[PLAIN_STREAMS] = plain
    streams.attach(app)
    app.add_routes(rest.routes)
    app.router.add_get(PLAIN_WS_PATH, plain.handle)
    app.router.add_get(SHARED_WS_PATH, plain.handle_shared)
    webapp.setup(app)
    app.cleanup_ctx.append(_runtime_ctx)
    app.cleanup_ctx.append(_egress_ctx)
    app.cleanup_ctx.append(_manager_ctx)
    # Sessions are handed to the fleet or closed (their clients get session:closed) before
    # the sockets go.
    app.on_shutdown.append(_on_shutdown)
    return app


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    """The resolver and the thread pools: first up, last down (browsers quit in theirs)."""
    s = app[SETTINGS]
    dns.configure(dns.DnsConfig(servers=s.dns_servers, timeout=s.dns_timeout,
                                max_lookups=s.dns_max_lookups, max_ttl=s.dns_max_ttl,
                                negative_ttl=s.dns_negative_ttl))
    executors.configure({"jpeg": s.jpeg_threads,
                         "browser": s.browser_threads or s.max_sessions + s.warm_browsers})
    try:
        yield
    finally:
        await dns.shutdown()
        await executors.shutdown()


async def _egress_ctx(app: web.Application) -> AsyncIterator[None]:
    """Local browsers reach the web only through the egress proxy (docs/security.md)."""
    settings, manager = app[SETTINGS], app[MANAGER]
    provider = manager.provider
    if settings.backend != "local" or not settings.egress_proxy or not isinstance(
            provider, PooledProvider):
        yield
        return
    egress = EgressProxy(manager.policy)
    await egress.start()
    provider.extra_args = egress.chrome_args()
    app[EGRESS] = egress
    try:
        yield
    finally:
        await egress.stop()


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
    await app[MANAGER].shutdown()
    await app[STREAMS].shutdown()
    await app[PLAIN_STREAMS].shutdown()


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
            response.headers["Access-Control-Allow-Headers"] = (
                "Content-Type, If-None-Match, X-Share-Token, Authorization, X-API-Key")
            response.headers["Access-Control-Expose-Headers"] = (
                "ETag, X-Frame-Seq, X-Frame-Width, X-Frame-Height, X-Frame-Timestamp, "
                "X-Frame-Quality, Retry-After")
        return response

    return cors
