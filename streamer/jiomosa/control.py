"""Stream controls shared by every push transport (Socket.IO and plain WebSocket): what a
``subscribe`` asks for, and ``quality:set`` / ``fps:set`` / ``adaptive:toggle``. Each returns
the payload of its answer event; the transports only differ in how they send it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from jiomosa import validation as v
from jiomosa.sessions import AnySession
from jiomosa.settings import Settings
from jiomosa.streaming import MAX_FPS, MAX_QUALITY, MIN_FPS, MIN_QUALITY, Subscriber, Transport

QualityListener = Callable[[Subscriber, str], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class StreamOptions:
    """What a subscriber asked for; ``quality`` None means adaptive."""

    fps: int
    quality: int | None
    encoding: str = "binary"


def stream_options(payload: dict[str, Any], settings: Settings,
                   default_encoding: str = "binary") -> StreamOptions:
    fps = v.integer(payload, "fps", MIN_FPS, MAX_FPS) if "fps" in payload else (
        settings.default_fps)
    quality = v.integer(payload, "quality", MIN_QUALITY, MAX_QUALITY) if (
        "quality" in payload) else None
    encoding = payload.get("encoding", default_encoding)
    if encoding not in ("binary", "base64"):
        raise v.BadRequest("encoding must be binary or base64")
    return StreamOptions(fps, quality, str(encoding))


async def start_subscriber(sub_id: str, session: AnySession, transport: Transport,
                           options: StreamOptions, settings: Settings,
                           on_quality_change: QualityListener) -> Subscriber:
    """A subscriber for ``session`` (not yet added to its hub: answer the client first)."""
    session.ensure_ready()
    start = settings.default_quality if options.quality is None else options.quality
    sub = Subscriber(sub_id, session.hub, transport, options.fps,
                     min(start, session.hub.source_quality), options.quality is None,
                     options.encoding, on_quality_change)
    if options.quality is not None:
        sub.set_quality(options.quality)
        await session.set_source_quality(max(options.quality, settings.default_quality))
    session.touch()
    return sub


def subscribe_response(session: AnySession, sub: Subscriber) -> dict[str, Any]:
    return {"session_id": session.id, "fps": sub.fps, "quality": sub.quality,
            "adaptive_mode": sub.adaptive, "encoding": sub.encoding}


def subscribed(session: AnySession) -> dict[str, Any]:
    return {"session_id": session.id, "message": f"Subscribed to session {session.id}"}


async def set_quality(sub: Subscriber, session: AnySession, data: Any,
                      settings: Settings) -> dict[str, Any]:
    """``quality:set``: fixed quality, adaptive off; Chrome encodes at the best quality any
    client of the session set by hand."""
    sub.set_quality(v.integer(v.as_object(data), "quality", MIN_QUALITY, MAX_QUALITY))
    sub.adaptive = False
    await session.set_source_quality(max(
        [settings.default_quality]
        + [s.manual_quality for s in session.hub.subscribers.values() if s.manual_quality]))
    return {"quality": sub.quality, "adaptive_mode": False}


def set_fps(sub: Subscriber, data: Any) -> dict[str, Any]:
    """``fps:set``: a fixed frame-rate cap, adaptive off."""
    sub.set_fps(v.integer(v.as_object(data), "fps", MIN_FPS, MAX_FPS))
    sub.adaptive = False
    return {"fps": sub.fps, "adaptive_mode": False}


def toggle_adaptive(sub: Subscriber, data: Any) -> dict[str, Any]:
    sub.adaptive = v.boolean(v.as_object(data), "enabled")
    return {"enabled": sub.adaptive, "adaptive_mode": sub.adaptive}


def adaptive_change(sub: Subscriber, reason: str) -> dict[str, Any]:
    """The ``quality:updated`` a client gets when adaptive mode moved its quality."""
    return {"quality": sub.quality, "adaptive_mode": True, "reason": reason}
