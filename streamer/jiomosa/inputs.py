"""Input events, the same for REST, Socket.IO and (later) plain WebSocket clients."""

from __future__ import annotations

from typing import Any

from jiomosa import validation as v
from jiomosa.browser.page import BrowserPage
from jiomosa.sessions import Session
from jiomosa.settings import Settings

INPUT_TYPES = ("click", "scroll", "key", "text")


async def apply_input(session: Session, kind: str, payload: Any, settings: Settings
                      ) -> dict[str, Any]:
    """Check ``payload``, dispatch it to the browser and return the acknowledgement body.

    Raises ``BadRequest``/``InputError`` for a bad payload and ``SessionError`` when the session
    cannot take input; the acknowledgement is only built after Chrome confirmed the dispatch.
    """
    data = v.as_object(payload)
    ack: dict[str, Any] = {"type": kind, "session_id": session.id}
    if kind == "click":
        x = v.number(data, "x", lo=0, hi=100_000)
        y = v.number(data, "y", lo=0, hi=100_000)

        async def action(page: BrowserPage) -> None:
            await page.click(x, y)

        ack.update(x=x, y=y)
    elif kind == "scroll":
        dx = v.number(data, "deltaX", 0.0, -100_000, 100_000)
        dy = v.number(data, "deltaY", 0.0, -100_000, 100_000)
        px = data.get("x")
        py = data.get("y")
        at = (v.number(data, "x", lo=0, hi=100_000), v.number(data, "y", lo=0, hi=100_000)) if (
            px is not None and py is not None) else None

        async def action(page: BrowserPage) -> None:
            await page.scroll(dx, dy, *(at or (None, None)))

        ack.update(deltaX=dx, deltaY=dy)
    elif kind == "key":
        key = v.key_name(data)

        async def action(page: BrowserPage) -> None:
            await page.key(key)

        ack.update(key=key)
    elif kind == "text":
        text = v.text(data, settings)

        async def action(page: BrowserPage) -> None:
            await page.insert_text(text)

        ack.update(length=len(text))
    else:
        raise v.BadRequest(f"unknown input type {kind!r}")
    latency = await session.dispatch(kind, action)
    ack["latency_ms"] = round(latency * 1000, 2)
    return ack
