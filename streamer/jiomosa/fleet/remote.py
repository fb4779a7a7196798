"""A session another streamer of the fleet drives: requests go to the owner over the relay,
frames come from the owner's relay channel into a local mirror hub."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Protocol

from jiomosa.core.errors import SessionError
from jiomosa.core.inputs import parse_input
from jiomosa.core.settings import Settings
from jiomosa.core.types import SessionState
from jiomosa.core.urlpolicy import UrlPolicy
from jiomosa.fleet.store import SessionRecord
from jiomosa.frames.hub import FrameHub
from jiomosa.sessions.session import Session, Share


class OwnerLink(Protocol):
    """What a remote session needs of this streamer's fleet coordinator."""

    settings: Settings
    policy: UrlPolicy

    def mirror_hub(self, session_id: str) -> FrameHub:
        """The local hub fed from the session's relay channel (made on first use)."""
        ...

    def existing_mirror(self, session_id: str) -> FrameHub | None: ...

    def note_remote_activity(self, session_id: str) -> None: ...

    async def touch_registry(self, session_id: str, when: float) -> None: ...

    async def call_owner(self, session: RemoteSession, op: str, args: dict[str, Any],
                         timeout: float = 10.0) -> dict[str, Any]: ...


class RemoteSession(Session):
    def __init__(self, link: OwnerLink, record: SessionRecord) -> None:
        self._link = link
        self.record = record
        self.id = record.session_id
        self.settings = link.settings

    # --------------------------------------------------------------- state
    @property
    def state(self) -> SessionState:
        return SessionState(self.record.state)

    @property
    def error(self) -> str | None:
        return self.record.error or None

    @property
    def owner(self) -> str:
        return self.record.owner

    @property
    def created_at(self) -> float:
        return self.record.created_at

    @property
    def last_activity(self) -> float:
        return self.record.last_activity

    @property
    def page_info(self) -> dict[str, Any]:
        return self.record.page_info

    @property
    def viewport_dict(self) -> dict[str, Any]:
        return self.record.viewport

    @property
    def hub(self) -> FrameHub:
        return self._link.mirror_hub(self.id)

    def watched_hub(self) -> FrameHub | None:
        return self._link.existing_mirror(self.id)

    @property
    def shares(self) -> dict[str, Share]:
        return {token: Share.from_dict(token, data)
                for token, data in self.record.shares.items()}

    # --------------------------------------------------------------- operations
    def touch(self) -> None:
        self._link.note_remote_activity(self.id)

    async def keepalive(self) -> float:
        self.ensure_ready()
        now = time.time()
        await self._link.touch_registry(self.id, now)
        return now

    async def load(self, url: str, timeout: float | None = None) -> dict[str, Any]:
        await self._link.policy.check(url)  # the clear 400 comes from here, not the owner
        timeout = timeout or self.settings.navigation_timeout
        return await self._call("load", {"url": url, "timeout": timeout}, timeout + 5)

    async def input(self, kind: str, payload: Any, via: str | None = None) -> dict[str, Any]:
        self.input_grant(via)  # as the registry knows it; the owner checks again
        parse_input(kind, payload, self.settings)  # bad input never travels
        self.ensure_ready()
        return await self._call("input", {"kind": kind, "payload": payload, "share": via})

    async def share(self, allow_input: bool) -> Share:
        # The owner makes it: it rewrites the record every second from its own session.
        made = await self._call("share", {"input": allow_input})
        share = Share.from_dict(str(made["token"]), made)
        self.record.shares[share.token] = share.to_dict()
        return share

    async def unshare(self, key: str) -> Share | None:
        gone = await self._call("unshare", {"key": key})
        if not gone.get("token"):
            return None
        self.record.shares.pop(str(gone["token"]), None)
        return Share.from_dict(str(gone["token"]), gone)

    async def set_source_quality(self, quality: int) -> None:
        await self._call("quality", {"quality": quality})

    async def _refresh(self) -> None:
        # The owner knows the live page (titles change without a load).
        with contextlib.suppress(SessionError):
            fresh = await self._call("info", {}, timeout=3.0)
            self.record.page_info = {"title": fresh["page_info"]["title"],
                                     "url": fresh["page_info"]["url"]}
            self.record.last_activity = max(self.record.last_activity,
                                            float(fresh["last_activity"]))

    async def _call(self, op: str, args: dict[str, Any], timeout: float = 10.0
                    ) -> dict[str, Any]:
        return await self._link.call_owner(self, op, args, timeout)
