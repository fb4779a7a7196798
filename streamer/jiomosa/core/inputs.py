"""Input events, the same for REST, Socket.IO, plain WebSocket clients and relayed requests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from jiomosa.core import validation as v
from jiomosa.core.settings import Settings

INPUT_TYPES = ("click", "scroll", "key", "text")


class InputTarget(Protocol):
    """What input runs against: a browser page (``jiomosa.browser.page.BrowserPage``)."""

    async def click(self, x: float, y: float) -> None: ...

    async def scroll(self, delta_x: float, delta_y: float,
                     x: float | None = None, y: float | None = None) -> None: ...

    async def key(self, name: str) -> None: ...

    async def insert_text(self, text: str) -> None: ...


@dataclass(frozen=True)
class InputCommand:
    """A checked input event, ready to run against a page."""

    kind: str
    ack: dict[str, Any]
    """Fields echoed in the acknowledgement."""
    run: Callable[[InputTarget], Awaitable[None]]


def parse_input(kind: str, payload: Any, settings: Settings) -> InputCommand:
    """Check ``payload`` for an input of ``kind``; raise ``BadRequest`` with what is wrong."""
    data = v.as_object(payload)
    if kind == "click":
        x = v.number(data, "x", lo=0, hi=100_000)
        y = v.number(data, "y", lo=0, hi=100_000)
        return InputCommand(kind, {"x": x, "y": y}, lambda page: page.click(x, y))
    if kind == "scroll":
        dx = v.number(data, "deltaX", 0.0, -100_000, 100_000)
        dy = v.number(data, "deltaY", 0.0, -100_000, 100_000)
        if data.get("x") is not None and data.get("y") is not None:
            px = v.number(data, "x", lo=0, hi=100_000)
            py = v.number(data, "y", lo=0, hi=100_000)
            return InputCommand(kind, {"deltaX": dx, "deltaY": dy},
                                lambda page: page.scroll(dx, dy, px, py))
        return InputCommand(kind, {"deltaX": dx, "deltaY": dy}, lambda page: page.scroll(dx, dy))
    if kind == "key":
        key = v.key_name(data)
        return InputCommand(kind, {"key": key}, lambda page: page.key(key))
    if kind == "text":
        text = v.text(data, settings)
        return InputCommand(kind, {"length": len(text)}, lambda page: page.insert_text(text))
    raise v.BadRequest(f"unknown input type {kind!r}")

