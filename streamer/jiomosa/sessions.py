"""Sessions as clients see them: a local one (this streamer drives its browser) or a remote one
(another streamer of the fleet owns it; requests are relayed to the owner, frames mirrored)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from jiomosa import metrics
from jiomosa.browser.page import BrowserPage, Viewport
from jiomosa.browsers import BrowserLease
from jiomosa.inputs import parse_input
from jiomosa.settings import Settings
from jiomosa.store import SessionRecord
from jiomosa.streaming import FrameHub

if TYPE_CHECKING:
    from jiomosa.manager import SessionManager

log = logging.getLogger(__name__)

SESSION_ID_RE = re.compile(r"^(?!\.+$)[A-Za-z0-9_.:-]{1,128}$")


class SessionError(Exception):
    """A request about a session cannot be served; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


def page_info_view(session_id: str, page_info: dict[str, Any],
                   viewport: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": page_info.get("title", ""),
        "url": page_info.get("url", ""),
        "session_id": session_id,
        "window_size": {"width": viewport.get("width"), "height": viewport.get("height")},
    }


class Session:
    """A session whose browser this streamer drives (it holds the session's lease)."""

    remote = False

    def __init__(self, session_id: str, viewport: Viewport, settings: Settings,
                 created_at: float | None = None, first_seq: int = 1,
                 hub: FrameHub | None = None) -> None:
        self.id = session_id
        self.viewport = viewport
        self.settings = settings
        self.created_at = created_at or time.time()
        self.last_activity = self.created_at
        self.state = "starting"
        self.error: str | None = None
        self.page: BrowserPage | None = None
        self.lease: BrowserLease | None = None
        # A streamer that takes a session over keeps the hub its clients already watch.
        self.hub = hub or FrameHub(session_id, settings.default_quality, first_seq)
        self.page_info: dict[str, Any] = {"title": "", "url": "about:blank"}
        self.log = logging.LoggerAdapter(log, {"session_id": session_id})
        self._source_quality = settings.default_quality
        self._input_lock = asyncio.Lock()
        self.owner = ""
        """Id of the streamer driving this session (this one)."""
        self.relay_active = False
        """Some other streamer mirrors this session's frames (checked once a second)."""

    # --------------------------------------------------------------- views
    def touch(self) -> None:
        self.last_activity = time.time()

    def record(self, owner: str) -> SessionRecord:
        endpoint = self.lease.endpoint.to_dict() if self.lease else {}
        return SessionRecord(
            session_id=self.id, created_at=self.created_at, last_activity=self.last_activity,
            owner=owner, endpoint=endpoint, viewport=self.viewport.to_dict(),
            page_info=self.page_info, state=self.state, error=self.error or "",
            seq=self.hub.latest.seq if self.hub.latest else 0)

    async def info(self) -> dict[str, Any]:
        if self.page is not None and self.state == "ready":
            with contextlib.suppress(Exception):
                self.page_info = await self.page.page_info()
        return {
            "session_id": self.id,
            "created_at": self.created_at,
            "last_activity": self.last_activity,
            "status": self.state,
            "page_info": self.page_info_view(),
            "viewport": self.viewport.to_dict(),
            "subscribers": len(self.hub.subscribers),
            "frame_seq": self.hub.latest.seq if self.hub.latest else 0,
            "clients": [{"id": sub.id[:8], "transport": sub.transport.name, **sub.stats()}
                        for sub in self.hub.subscribers.values()],
            "owner": self.owner,
            **({"error": self.error} if self.error else {}),
        }

    def page_info_view(self) -> dict[str, Any]:
        return page_info_view(self.id, self.page_info, self.viewport.to_dict())

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "created_at": self.created_at,
            "last_activity": self.last_activity,
            "current_page": self.page_info.get("url", ""),
            "status": self.state,
        }

    # --------------------------------------------------------------- operations
    def ensure_ready(self) -> None:
        if self.state == "failed":
            raise SessionError(f"session failed: {self.error}", 409)
        if self.page is None or self.state != "ready":
            raise SessionError("session is not ready", 409)

    def require_page(self) -> BrowserPage:
        self.ensure_ready()
        assert self.page is not None
        return self.page

    async def keepalive(self) -> float:
        if self.state == "failed":
            raise SessionError(f"session failed: {self.error}", 409)
        self.touch()
        return self.last_activity

    async def load(self, url: str, timeout: float | None = None) -> dict[str, Any]:
        page = self.require_page()
        self.touch()
        self.page_info = await page.navigate(url, timeout or self.settings.navigation_timeout)
        self.touch()
        return self.page_info_view()

    async def input(self, kind: str, payload: Any) -> dict[str, Any]:
        """Check and dispatch one input; the ack comes after Chrome confirmed it."""
        command = parse_input(kind, payload, self.settings)
        page = self.require_page()
        self.touch()
        started = time.perf_counter()
        async with self._input_lock:  # input order is the user's order
            await command.run(page)
        elapsed = time.perf_counter() - started
        metrics.INPUT_LATENCY.labels(kind).observe(elapsed)
        return {"type": kind, "session_id": self.id, **command.ack,
                "latency_ms": round(elapsed * 1000, 2)}

    async def set_source_quality(self, quality: int) -> None:
        """Chrome encodes at the best quality any client asked for; others get re-encodes."""
        if quality == self._source_quality or self.page is None or self.state != "ready":
            return
        self._source_quality = quality
        self.hub.source_quality = quality
        await self.page.start_screencast(quality)


class RemoteSession:
    """A session owned by another streamer: requests go to the owner over the relay, frames
    come from the owner's relay channel into a local mirror hub."""

    remote = True

    def __init__(self, manager: SessionManager, record: SessionRecord) -> None:
        self._manager = manager
        self.record = record
        self.id = record.session_id
        self.settings = manager.settings

    @property
    def state(self) -> str:
        return self.record.state

    @property
    def error(self) -> str | None:
        return self.record.error or None

    @property
    def hub(self) -> FrameHub:
        return self._manager.mirror_hub(self.id)

    @property
    def owner(self) -> str:
        return self.record.owner

    def touch(self) -> None:
        self._manager.note_remote_activity(self.id)

    def page_info_view(self) -> dict[str, Any]:
        return page_info_view(self.id, self.record.page_info, self.record.viewport)

    def summary(self) -> dict[str, Any]:
        r = self.record
        return {"session_id": r.session_id, "created_at": r.created_at,
                "last_activity": r.last_activity, "current_page": r.page_info.get("url", ""),
                "status": r.state}

    async def info(self) -> dict[str, Any]:
        r = self.record
        mirror = self._manager.mirrors.get(self.id)
        if r.state == "ready":
            # The owner knows the live page (titles change without a load).
            with contextlib.suppress(SessionError):
                fresh = await self._call("info", {}, timeout=3.0)
                r.page_info = {"title": fresh["page_info"]["title"],
                               "url": fresh["page_info"]["url"]}
                r.last_activity = max(r.last_activity, float(fresh["last_activity"]))
        return {
            "session_id": r.session_id, "created_at": r.created_at,
            "last_activity": r.last_activity, "status": r.state,
            "page_info": self.page_info_view(), "viewport": r.viewport,
            "subscribers": len(mirror.subscribers) if mirror else 0,
            "frame_seq": mirror.latest.seq if mirror and mirror.latest else 0,
            "clients": [{"id": sub.id[:8], "transport": sub.transport.name, **sub.stats()}
                        for sub in (mirror.subscribers.values() if mirror else [])],
            "owner": r.owner,
            **({"error": r.error} if r.error else {}),
        }

    def ensure_ready(self) -> None:
        if self.record.state == "failed":
            raise SessionError(f"session failed: {self.record.error}", 409)
        if self.record.state != "ready":
            raise SessionError("session is not ready", 409)

    def require_page(self) -> None:
        self.ensure_ready()

    async def keepalive(self) -> float:
        self.ensure_ready()
        now = time.time()
        await self._manager.store.touch(self.id, now)
        return now

    async def load(self, url: str, timeout: float | None = None) -> dict[str, Any]:
        await self._manager.policy.check(url)  # the clear 400 comes from here, not the owner
        timeout = timeout or self.settings.navigation_timeout
        return await self._call("load", {"url": url, "timeout": timeout}, timeout + 5)

    async def input(self, kind: str, payload: Any) -> dict[str, Any]:
        parse_input(kind, payload, self.settings)  # bad input never travels
        self.ensure_ready()
        return await self._call("input", {"kind": kind, "payload": payload})

    async def set_source_quality(self, quality: int) -> None:
        await self._call("quality", {"quality": quality})

    async def _call(self, op: str, args: dict[str, Any], timeout: float = 10.0
                    ) -> dict[str, Any]:
        return await self._manager.call_owner(self, op, args, timeout)


AnySession = Session | RemoteSession
Notifier = Callable[[AnySession, str], Awaitable[None]]
