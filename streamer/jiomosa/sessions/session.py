"""A session as every transport sees it: one ``Session`` protocol, wherever it is driven.

``LocalSession`` is driven here: this streamer holds its browser page (CDP) and its frame hub.
The fleet adds ``jiomosa.fleet.remote.RemoteSession`` (driven by another streamer; requests
relayed, frames mirrored). Transports never ask which one they hold.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from jiomosa import metrics
from jiomosa.core.errors import SessionError, SessionRestarting
from jiomosa.core.inputs import InputTarget, parse_input
from jiomosa.core.settings import Settings
from jiomosa.core.types import SessionState, Viewport
from jiomosa.frames.hub import FrameHub
from jiomosa.providers.base import BrowserLease

log = logging.getLogger(__name__)

SESSION_ID_RE = re.compile(r"^(?!\.+$)[A-Za-z0-9_.:-]{1,128}$")
SHARE_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
MAX_SHARES = 16  # live share links per session
RESTORABLE_URL_RE = re.compile(r"^https?://", re.IGNORECASE)
"""Pages a restarted browser reopens: an error page (``chrome-error://``) or ``about:blank``
is not worth reopening, the last real page before it is."""


@dataclass
class CrashLog:
    """A session's recent browser crashes: tells a one-off from a crash loop."""

    times: deque[float] = field(default_factory=deque)

    def note(self, now: float, restarts: int, window: float) -> str | None:
        """Count a crash at ``now``. None: restart the browser; else the reason the session
        ends with (``failed`` first, which old clients match): more than ``restarts`` crashes
        within ``window`` seconds, or restarts are off (0)."""
        while self.times and now - self.times[0] > window:
            self.times.popleft()
        self.times.append(now)
        if restarts <= 0:
            return "failed"
        if len(self.times) <= restarts:
            return None
        span = max(1, math.ceil(now - self.times[0]))
        return f"failed: the browser crashed {len(self.times)} times in {span} s"


@dataclass(frozen=True)
class Share:
    """A link to watch a session without knowing its id (docs/protocol.md, *Sharing*).

    ``token`` (192 random bits) is the viewer's capability, separate from the session id (the
    owner's): a viewer can be cut off without the owner losing anything. ``input``: the owner
    let the viewer drive the page too; otherwise the view is read-only.
    """

    token: str
    input: bool = False
    created_at: float = 0.0

    @property
    def id(self) -> str:
        """What a viewer is shown wherever an owner is shown the session id: it names the
        share (a digest of its token), grants nothing, and reveals neither capability."""
        return "share-" + hashlib.sha256(self.token.encode()).hexdigest()[:16]

    @classmethod
    def new(cls, allow_input: bool) -> Share:
        return cls(secrets.token_urlsafe(24), allow_input, time.time())

    def view(self) -> dict[str, Any]:
        """The share as its owner lists it (without the token)."""
        return {"share_id": self.id, "input": self.input, "created_at": self.created_at}

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "created_at": self.created_at}

    @classmethod
    def from_dict(cls, token: str, data: dict[str, Any]) -> Share:
        return cls(token, bool(data.get("input")), float(data.get("created_at") or 0.0))


class Page(InputTarget, Protocol):
    """What a session needs of its browser page (``jiomosa.browser.page.BrowserPage``)."""

    log: logging.LoggerAdapter[logging.Logger]
    blocked_requests: int

    def set_frame_callback(
        self, callback: Callable[[bytes, int, int, dict[str, Any]], object] | None) -> None: ...

    def on_gone(self, callback: Callable[[str], None]) -> None: ...

    def on_info(self, callback: Callable[[dict[str, Any]], None]) -> None: ...

    async def start_screencast(self, quality: int) -> None: ...

    async def navigate(self, url: str, timeout: float) -> dict[str, Any]: ...

    async def page_info(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def page_info_view(session_id: str, page_info: dict[str, Any],
                   viewport: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": page_info.get("title", ""),
        "url": page_info.get("url", ""),
        "session_id": session_id,
        "window_size": {"width": viewport.get("width"), "height": viewport.get("height")},
    }


class Session(abc.ABC):
    """What REST, Socket.IO and the plain WebSocket may do with a session."""

    id: str
    settings: Settings

    # --------------------------------------------------------------- what it is
    @property
    @abc.abstractmethod
    def state(self) -> SessionState: ...

    @property
    @abc.abstractmethod
    def error(self) -> str | None: ...

    @property
    @abc.abstractmethod
    def owner(self) -> str:
        """Id of the streamer that drives the session."""

    @property
    @abc.abstractmethod
    def created_at(self) -> float: ...

    @property
    @abc.abstractmethod
    def last_activity(self) -> float: ...

    @property
    @abc.abstractmethod
    def page_info(self) -> dict[str, Any]:
        """``{title, url}`` as last known."""

    @property
    @abc.abstractmethod
    def viewport_dict(self) -> dict[str, Any]: ...

    @property
    @abc.abstractmethod
    def hub(self) -> FrameHub:
        """The hub local clients stream from."""

    @abc.abstractmethod
    def watched_hub(self) -> FrameHub | None:
        """The hub if local clients already use one (never creates one)."""

    @property
    @abc.abstractmethod
    def shares(self) -> dict[str, Share]:
        """The live share links, by token."""

    # --------------------------------------------------------------- what it does
    @abc.abstractmethod
    def touch(self) -> None:
        """A client did something: the session is not idle."""

    @abc.abstractmethod
    async def keepalive(self) -> float: ...

    @abc.abstractmethod
    async def load(self, url: str, timeout: float | None = None) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def input(self, kind: str, payload: Any, via: str | None = None) -> dict[str, Any]:
        """Check and dispatch one input; the ack comes after Chrome confirmed it. ``via``: the
        token of the share the input came through (None: from the owner)."""

    @abc.abstractmethod
    async def share(self, allow_input: bool) -> Share:
        """A new share link."""

    @abc.abstractmethod
    async def unshare(self, key: str) -> Share | None:
        """Revoke the share whose token or share id is ``key``; None if there is none."""

    @abc.abstractmethod
    async def set_source_quality(self, quality: int) -> None: ...

    @abc.abstractmethod
    async def _refresh(self) -> None:
        """Bring ``page_info`` and ``last_activity`` up to date for ``info``."""

    # --------------------------------------------------------------- views (written once)
    def ensure_ready(self) -> None:
        """Refuse a session that cannot be streamed. A recovering one can: its clients keep
        (or take) their subscription and get frames again once its new browser is up."""
        if self.state == SessionState.FAILED:
            raise SessionError(f"session failed: {self.error}", 409)
        if self.state not in (SessionState.READY, SessionState.RECOVERING):
            raise SessionError("session is not ready", 409)

    def page_info_view(self) -> dict[str, Any]:
        return page_info_view(self.id, self.page_info, self.viewport_dict)

    def input_grant(self, via: str | None) -> str:
        """The id an input's answer names: the session's for its owner, the share's for a
        viewer whose live share grants input. The one check of a viewer's input, made where
        the session is driven (a relayed input carries its share token to the owner)."""
        if via is None:
            return self.id
        share = self.shares.get(via)
        if share is None:
            raise SessionError("Share not found (it was revoked or the session ended)", 404)
        if not share.input:
            raise SessionError("this shared view is read-only: its owner did not allow input",
                               403)
        return share.id

    def shared_view(self, share: Share) -> dict[str, Any]:
        """What a share's viewer may know of the session: never its id, and of its page the
        title and origin only (a URL's path and query may carry the owner's secrets)."""
        url = str(self.page_info.get("url", ""))
        origin = re.match(r"^[a-z][a-z0-9+.-]*://[^/?#]*", url, re.IGNORECASE)
        page = {**self.page_info, "url": origin.group(0) + "/" if origin else ""}
        return {"share_id": share.id, "input": share.input, "status": str(self.state),
                "page_info": page_info_view(share.id, page, self.viewport_dict),
                "viewport": self.viewport_dict}

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "created_at": self.created_at,
            "last_activity": self.last_activity,
            "current_page": self.page_info.get("url", ""),
            "status": str(self.state),
        }

    async def info(self) -> dict[str, Any]:
        if self.state == SessionState.READY:
            await self._refresh()
        hub = self.watched_hub()
        clients = list(hub.subscribers.values()) if hub is not None else []
        return {
            "session_id": self.id,
            "created_at": self.created_at,
            "last_activity": self.last_activity,
            "status": str(self.state),
            "page_info": self.page_info_view(),
            "viewport": self.viewport_dict,
            "subscribers": len(clients),
            "frame_seq": hub.latest.seq if hub is not None and hub.latest else 0,
            "clients": [sub.describe() for sub in clients],
            "owner": self.owner,
            **({"error": self.error} if self.error else {}),
        }


class LocalSession(Session):
    """A session whose browser this streamer drives."""

    def __init__(self, session_id: str, viewport: Viewport, settings: Settings,
                 created_at: float | None = None, hub: FrameHub | None = None,
                 owner: str = "") -> None:
        self.id = session_id
        self.viewport = viewport
        self.settings = settings
        self._created_at = created_at or time.time()
        self._last_activity = self._created_at
        self._state = SessionState.STARTING
        self._error: str | None = None
        self._owner = owner
        self.page: Page | None = None
        self.lease: BrowserLease | None = None
        # A streamer that takes a session over keeps the hub its clients already watch.
        self._hub = hub or FrameHub(session_id, settings.default_quality)
        self._page_info: dict[str, Any] = {"title": "", "url": "about:blank"}
        self.log = logging.LoggerAdapter(log, {"session_id": session_id})
        self._source_quality = settings.default_quality
        self._input_lock = asyncio.Lock()
        self._shares: dict[str, Share] = {}
        self._restore_url = ""
        self.crashes = CrashLog()

    # --------------------------------------------------------------- state
    @property
    def state(self) -> SessionState:
        return self._state

    @state.setter
    def state(self, value: SessionState) -> None:
        self._state = value

    @property
    def error(self) -> str | None:
        return self._error

    @error.setter
    def error(self, value: str | None) -> None:
        self._error = value

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def created_at(self) -> float:
        return self._created_at

    @property
    def last_activity(self) -> float:
        return self._last_activity

    @last_activity.setter
    def last_activity(self, value: float) -> None:
        self._last_activity = value

    @property
    def page_info(self) -> dict[str, Any]:
        return self._page_info

    @page_info.setter
    def page_info(self, value: dict[str, Any]) -> None:
        self._page_info = value
        if RESTORABLE_URL_RE.match(str(value.get("url", ""))):
            self._restore_url = str(value["url"])

    @property
    def restore_url(self) -> str:
        """The last web page the session showed ('' if none): what a restarted browser
        reopens."""
        return self._restore_url

    @property
    def viewport_dict(self) -> dict[str, Any]:
        return self.viewport.to_dict()

    @property
    def hub(self) -> FrameHub:
        return self._hub

    def watched_hub(self) -> FrameHub:
        return self._hub

    @property
    def shares(self) -> dict[str, Share]:
        return self._shares

    def restore_shares(self, shares: dict[str, Share]) -> None:
        """Keep the share links of a session taken over from another streamer."""
        self._shares = dict(shares)

    # --------------------------------------------------------------- the page
    def bind(self, page: Page, on_gone: Callable[[str], None]) -> None:
        """Take ``page`` as this session's browser page: its frames go to the hub."""
        self.page = page
        page.log = self.log
        page.set_frame_callback(self._hub.publish)
        page.on_gone(on_gone)
        page.on_info(self._page_changed)

    def _page_changed(self, info: dict[str, Any]) -> None:
        if self.page is not None:  # a released page's late news is not the session's
            self.page_info = info

    def require_page(self) -> Page:
        if self._state == SessionState.RECOVERING:
            raise SessionRestarting()
        self.ensure_ready()
        if self.page is None:
            raise SessionError("session is not ready", 409)
        return self.page

    # --------------------------------------------------------------- operations
    def touch(self) -> None:
        self._last_activity = time.time()

    async def keepalive(self) -> float:
        if self._state == SessionState.FAILED:
            raise SessionError(f"session failed: {self._error}", 409)
        self.touch()
        return self._last_activity

    async def load(self, url: str, timeout: float | None = None) -> dict[str, Any]:
        page = self.require_page()
        self.touch()
        self.page_info = await page.navigate(url, timeout or self.settings.navigation_timeout)
        self.touch()
        return self.page_info_view()

    async def input(self, kind: str, payload: Any, via: str | None = None) -> dict[str, Any]:
        shown = self.input_grant(via)
        command = parse_input(kind, payload, self.settings)
        page = self.require_page()
        self.touch()
        started = time.perf_counter()
        async with self._input_lock:  # input order is the user's order
            await command.run(page)
        elapsed = time.perf_counter() - started
        metrics.INPUT_LATENCY.labels(kind).observe(elapsed)
        return {"type": kind, "session_id": shown, **command.ack,
                "latency_ms": round(elapsed * 1000, 2)}

    async def share(self, allow_input: bool) -> Share:
        self.ensure_ready()
        if len(self._shares) >= MAX_SHARES:
            raise SessionError(f"a session has at most {MAX_SHARES} share links; revoke one "
                               "first", 409)
        share = Share.new(allow_input)
        self._shares[share.token] = share
        return share

    async def unshare(self, key: str) -> Share | None:
        for token, share in list(self._shares.items()):
            if key in (token, share.id):
                return self._shares.pop(token)
        return None

    async def set_source_quality(self, quality: int) -> None:
        """Chrome encodes at the best quality any client asked for; others get re-encodes."""
        if quality == self._source_quality or self._state not in (
                SessionState.READY, SessionState.RECOVERING):
            return
        self._source_quality = quality
        self._hub.source_quality = quality  # a restarted browser starts at it too
        if self.page is not None and self._state == SessionState.READY:
            await self.page.start_screencast(quality)

    async def _refresh(self) -> None:
        if self.page is not None:
            with contextlib.suppress(Exception):
                self.page_info = await self.page.page_info()


Notifier = Callable[[Session, str], Awaitable[None]]
"""Told ``(session, reason)`` before a session's subscribers are dropped."""
