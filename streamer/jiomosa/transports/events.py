"""The streaming events, one table for every push transport (Socket.IO and plain WebSocket).

A transport wraps each connection in a ``ClientChannel`` and hands every incoming event to
``dispatch``; the handlers below do the work and answer through the channel. What differs
between transports stays in the channel: how a message is sent, which session a ``subscribe``
names (Socket.IO: any; plain WebSocket: the one in its path) and where input goes without a
subscription. Errors become one ``error`` event through ``jiomosa.core.errors``.

A channel that watches through a share link (``grant``) is a viewer: every message it gets
names the share (``shown_id``), never the session id, and its input goes to the session with
the share's token, which the session checks (``Session.input_grant``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from jiomosa.core import validation as v
from jiomosa.core.errors import SessionError, status_of
from jiomosa.core.guard import Guard
from jiomosa.core.limits import MessageLimit
from jiomosa.core.settings import Settings
from jiomosa.core.types import MAX_FPS, MAX_QUALITY, MIN_FPS, MIN_QUALITY
from jiomosa.frames.deltasub import DeltaOptions, DeltaSubscriber, DeltaTransport, delta_options
from jiomosa.frames.pacer import Subscriber, Transport
from jiomosa.sessions.session import Session, Share

log = logging.getLogger(__name__)

QualityListener = Callable[[Subscriber, str], Coroutine[Any, Any, None]]
ECHO_MAX_CHARS = 64
ECHO_MAX_FIELDS = 8


class ClientChannel(Protocol):
    """One client connection of a push transport."""

    id: str
    """Also the id of its subscriber."""
    settings: Settings
    default_encoding: str
    subscribe_extra: dict[str, Any]
    """Fields this transport adds to ``subscribe:response``."""
    sub: Subscriber | None
    subscribed_to: Session | None
    grant: Share | None
    """The share link the channel watches through; None: it named the session by its id."""

    @property
    def transport(self) -> Transport: ...

    async def send(self, event: str, data: Any, reply: bool = True) -> None:
        """Send one event; ``reply``: it answers the event being handled (not a notice)."""
        ...

    async def target(self, payload: dict[str, Any]) -> tuple[Session, Share | None]:
        """The session a ``subscribe`` payload names, and the share link it names it by."""
        ...

    async def input_session(self) -> Session:
        """The session input goes to."""
        ...


@dataclass(frozen=True)
class StreamOptions:
    """What a subscriber asked for; ``quality`` None means adaptive."""

    fps: int
    quality: int | None
    encoding: str = "binary"
    delta: DeltaOptions | None = None
    """Delta frames (docs/protocol.md), or None: full frames."""


def stream_options(payload: dict[str, Any], settings: Settings,
                   default_encoding: str = "binary") -> StreamOptions:
    fps = v.integer(payload, "fps", MIN_FPS, MAX_FPS) if "fps" in payload else (
        settings.default_fps)
    quality = v.integer(payload, "quality", MIN_QUALITY, MAX_QUALITY) if (
        "quality" in payload) else None
    encoding = payload.get("encoding", default_encoding)
    if encoding not in ("binary", "base64"):
        raise v.BadRequest("encoding must be binary or base64")
    delta = delta_options(payload)
    if delta is not None:
        if payload.get("encoding", "binary") != "binary":
            raise v.BadRequest("delta frames are binary: leave encoding out")
        encoding = "binary"
    return StreamOptions(fps, quality, str(encoding), delta)


def shown_id(ch: ClientChannel, session_id: str) -> str:
    """The id the channel is told for its session: a share link's viewer gets the share's."""
    return ch.grant.id if ch.grant is not None else session_id


# ------------------------------------------------------------------- subscriptions
async def subscribe(ch: ClientChannel, session: Session, options: StreamOptions,
                    grant: Share | None = None) -> None:
    """Replace the channel's subscription with one to ``session`` (through the share link
    ``grant``, if given); the current picture goes out right after the answers."""
    session.ensure_ready()
    if grant is not None and grant.token not in session.shares:
        raise SessionError("Share not found", 404)  # revoked since the channel opened
    await unsubscribe(ch)
    start = ch.settings.default_quality if options.quality is None else options.quality

    async def quality_changed(sub: Subscriber, reason: str) -> None:
        if sub is ch.sub:
            await ch.send("quality:updated", {"quality": sub.quality, "adaptive_mode": True,
                                              "reason": reason}, reply=False)

    sub: Subscriber
    if options.delta is not None:
        if not hasattr(ch.transport, "send_delta"):
            raise v.BadRequest("this transport cannot carry delta frames")
        transport: DeltaTransport = ch.transport  # type: ignore[assignment]
        sub = DeltaSubscriber(ch.id, session.hub, transport, options.fps,
                              min(start, session.hub.source_quality), options.quality is None,
                              options.delta.formats, options.delta.tile, quality_changed)
    else:
        sub = Subscriber(ch.id, session.hub, ch.transport, options.fps,
                         min(start, session.hub.source_quality), options.quality is None,
                         options.encoding, quality_changed)
    # Known to the channel before the answers go out: a close meanwhile reaches the client.
    ch.sub, ch.subscribed_to, ch.grant = sub, session, grant
    shown = shown_id(ch, session.id)
    if options.quality is not None:
        sub.set_quality(options.quality)
        await session.set_source_quality(_best_manual_quality(session, ch.settings, sub))
    session.touch()
    shared = {"share": {"share_id": grant.id, "input": grant.input}} if grant else {}
    await ch.send("subscribe:response", {
        "session_id": shown, "fps": sub.fps, "quality": sub.quality,
        "adaptive_mode": sub.adaptive, "encoding": sub.encoding, **shared,
        **(options.delta.describe() if options.delta else {"delta": False}),
        **ch.subscribe_extra})
    await ch.send("subscribed", {"session_id": shown,
                                 "message": f"Subscribed to session {shown}"})
    if ch.sub is sub and not session.hub.closed:
        session.hub.add(sub)  # the current picture goes out now, after the answers


def _best_manual_quality(session: Session, settings: Settings,
                         joining: Subscriber | None = None) -> int:
    """Chrome encodes at the best quality any client of the session set by hand."""
    subs = [*session.hub.subscribers.values(), *([joining] if joining else [])]
    return max([settings.default_quality] + [s.manual_quality for s in subs if s.manual_quality])


async def unsubscribe(ch: ClientChannel) -> Subscriber | None:
    """Drop the channel's subscription, if any. Idle time counts from the last subscriber
    leaving, so the session is touched."""
    sub, session = ch.sub, ch.subscribed_to
    ch.sub = None
    if sub is not None:
        await sub.hub.remove(sub.id)
        await sub.stop()  # a session's close may have taken it off the hub already
        if session is not None:
            session.touch()
    return sub


async def session_closed(ch: ClientChannel, session: Session, reason: str) -> bool:
    """Stop streaming ``session`` to the channel and tell it why; False if not its session."""
    if ch.subscribed_to is None or ch.subscribed_to.id != session.id:
        return False
    sub, ch.sub = ch.sub, None
    if sub is not None:
        await sub.stop()
    await ch.send("session:closed", {"session_id": shown_id(ch, session.id), "reason": reason},
                  reply=False)
    return True


async def session_state(ch: ClientChannel, session: Session, state: str) -> bool:
    """Tell the channel its session's new state (``recovering``: the browser is restarting,
    frames pause and input answers an error; ``ready``: back); False if not its session.
    The subscription stays as it is: frames go on from the same hub."""
    if ch.subscribed_to is None or ch.subscribed_to.id != session.id:
        return False
    await ch.send("session:state", {"session_id": shown_id(ch, session.id), "state": state},
                  reply=False)
    return True


def revoked(ch: ClientChannel, session: Session) -> bool:
    """The channel watches ``session`` through a share link that is no longer live."""
    return (ch.grant is not None and ch.subscribed_to is not None
            and ch.subscribed_to.id == session.id and ch.grant.token not in session.shares)


def subscription(ch: ClientChannel) -> tuple[Subscriber, Session]:
    if ch.sub is None or ch.subscribed_to is None:
        raise SessionError("not subscribed to a session (send subscribe first)")
    return ch.sub, ch.subscribed_to


def pong(ch: ClientChannel, data: Any) -> dict[str, Any]:
    """The answer to ``ping``: the round trip and this client's statistics. Only a small
    payload is echoed: an echo must not let a client make the server hold its data."""
    return {"echo": _echo(data), "server_time": time.time(),
            "stats": ch.sub.stats() if ch.sub is not None else None}


def _echo(data: Any) -> Any:
    def small(value: Any) -> bool:
        return value is None or isinstance(value, bool | int | float) or (
            isinstance(value, str) and len(value) <= ECHO_MAX_CHARS)
    if small(data):
        return data
    if (isinstance(data, dict) and len(data) <= ECHO_MAX_FIELDS
            and all(small(k) and small(x) for k, x in data.items())):
        return data
    return None


# ------------------------------------------------------------------- the handlers
async def _subscribe(ch: ClientChannel, data: Any) -> None:
    payload = v.as_object(data)
    session, grant = await ch.target(payload)
    await subscribe(ch, session, stream_options(payload, ch.settings, ch.default_encoding),
                    grant)


async def _unsubscribe(ch: ClientChannel, _data: Any) -> None:
    sub = await unsubscribe(ch)
    await ch.send("unsubscribed", {"message": "Unsubscribed" if sub else "Not subscribed"})


def _input(kind: str) -> Handler:
    async def handle(ch: ClientChannel, data: Any) -> None:
        session = await ch.input_session()
        via = ch.grant.token if ch.grant is not None else None
        await ch.send("input:acknowledged", await session.input(kind, data, via=via))
    handle.__name__ = f"input_{kind}"
    return handle


async def _quality_set(ch: ClientChannel, data: Any) -> None:
    """Fixed quality, adaptive off; Chrome encodes at the best quality any client of the
    session set by hand."""
    sub, session = subscription(ch)
    sub.set_quality(v.integer(v.as_object(data), "quality", MIN_QUALITY, MAX_QUALITY))
    sub.adaptive = False
    await session.set_source_quality(_best_manual_quality(session, ch.settings))
    await ch.send("quality:updated", {"quality": sub.quality, "adaptive_mode": False})


async def _fps_set(ch: ClientChannel, data: Any) -> None:
    """A fixed frame-rate cap, adaptive off."""
    sub, _ = subscription(ch)
    sub.set_fps(v.integer(v.as_object(data), "fps", MIN_FPS, MAX_FPS))
    sub.adaptive = False
    await ch.send("fps:updated", {"fps": sub.fps, "adaptive_mode": False})


async def _adaptive_toggle(ch: ClientChannel, data: Any) -> None:
    sub, _ = subscription(ch)
    sub.adaptive = v.boolean(v.as_object(data), "enabled")
    await ch.send("adaptive:updated", {"enabled": sub.adaptive, "adaptive_mode": sub.adaptive})


async def _ping(ch: ClientChannel, data: Any) -> None:
    await ch.send("pong", pong(ch, data))


async def _frame_key(ch: ClientChannel, _data: Any) -> None:
    """A delta client lost track of its picture: its next update is a key frame."""
    sub, _ = subscription(ch)
    if not isinstance(sub, DeltaSubscriber):
        raise v.BadRequest("frame:key is for delta subscriptions (subscribe with delta: true)")
    sub.request_key()


Handler = Callable[[ClientChannel, Any], Awaitable[None]]

EVENTS: dict[str, Handler] = {
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "input:click": _input("click"),
    "input:scroll": _input("scroll"),
    "input:key": _input("key"),
    "input:text": _input("text"),
    "quality:set": _quality_set,
    "fps:set": _fps_set,
    "adaptive:toggle": _adaptive_toggle,
    "ping": _ping,
    "frame:key": _frame_key,
}
"""Every event a client may send, with its handler."""


async def dispatch(ch: ClientChannel, event: str, data: Any) -> None:
    """Run one client event; any failure becomes an ``error`` event (never a traceback)."""
    handler = EVENTS.get(event)
    try:
        if handler is None:
            raise v.BadRequest(f"unknown event {event[:64]!r}; known: {', '.join(EVENTS)}")
        await handler(ch, data)
    except Exception as exc:
        status, message, extra = status_of(exc)
        if status == 500:
            log.exception("event %s failed", event[:64])
        answer: dict[str, Any] = {"message": message, "event": event[:64]}
        if "retry_after" in extra:  # as REST's Retry-After: when to try again (seconds)
            answer["retry_after"] = extra["retry_after"]
        await ch.send("error", answer)


class Flooding(Exception):
    """A connection keeps sending past its message rate after being told: close it."""


async def refused(ch: ClientChannel, guard: Guard, limit: MessageLimit | None,
                  event: str | None) -> bool:
    """Count one incoming message against the connection's ``limit``. True: it is refused
    and the client was told (``error {message, event, retry_after}``); False: handle it.
    Raises ``Flooding`` once the connection has used up its strikes."""
    wait, flooding = guard.check_message(limit)
    if not wait:
        return False
    if flooding:
        raise Flooding(f"more than {ch.settings.flood_strikes} messages past its rate")
    answer: dict[str, Any] = guard.message_refused(wait)
    if event is not None:
        answer["event"] = event[:64]
    await ch.send("error", answer)
    return True
