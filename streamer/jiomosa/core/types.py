"""Plain data every layer shares: viewports, keys, session states and browser endpoints.

Nothing here talks to a browser, a client or a store, so that checking input, building pod
manifests and keeping the registry never depend on CDP or Selenium.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

from jiomosa.core.errors import ClientError

# Limits of what a client may ask of a stream (the public contract).
MIN_QUALITY = 10
MAX_QUALITY = 90
MIN_FPS = 1
MAX_FPS = 60


@dataclass(frozen=True)
class Viewport:
    """What the page is emulated as. Sizes are CSS pixels."""

    width: int = 1280
    height: int = 720
    device_scale_factor: float = 1.0
    mobile: bool = False
    user_agent: str = ""

    @property
    def frame_width(self) -> int:
        return max(1, round(self.width * self.device_scale_factor))

    @property
    def frame_height(self) -> int:
        return max(1, round(self.height * self.device_scale_factor))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Viewport:
        return cls(int(data.get("width", 1280)), int(data.get("height", 720)),
                   float(data.get("deviceScaleFactor", 1.0)), bool(data.get("mobile", False)),
                   str(data.get("userAgent", "")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "deviceScaleFactor": self.device_scale_factor,
            "mobile": self.mobile,
            "userAgent": self.user_agent,
        }


@dataclass(frozen=True)
class KeySpec:
    key: str
    code: str
    key_code: int
    text: str = ""


KEYS: dict[str, KeySpec] = {
    "Enter": KeySpec("Enter", "Enter", 13, "\r"),
    "Backspace": KeySpec("Backspace", "Backspace", 8),
    "Tab": KeySpec("Tab", "Tab", 9),
    "Escape": KeySpec("Escape", "Escape", 27),
    "Delete": KeySpec("Delete", "Delete", 46),
    "ArrowUp": KeySpec("ArrowUp", "ArrowUp", 38),
    "ArrowDown": KeySpec("ArrowDown", "ArrowDown", 40),
    "ArrowLeft": KeySpec("ArrowLeft", "ArrowLeft", 37),
    "ArrowRight": KeySpec("ArrowRight", "ArrowRight", 39),
    "Home": KeySpec("Home", "Home", 36),
    "End": KeySpec("End", "End", 35),
    "PageUp": KeySpec("PageUp", "PageUp", 33),
    "PageDown": KeySpec("PageDown", "PageDown", 34),
    "Space": KeySpec(" ", "Space", 32, " "),
}
KEYS[" "] = KEYS["Space"]


class SessionState(enum.StrEnum):
    """Where a session is in its life. A ``str``: records and API answers carry the value."""

    STARTING = "starting"
    READY = "ready"
    RECOVERING = "recovering"
    """Its browser died and a new one is being started under the same session: clients keep
    their subscription, input waits (503) until it is ``ready`` again."""
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"

    @property
    def live(self) -> bool:
        """Counts against capacity."""
        return self in (SessionState.STARTING, SessionState.READY, SessionState.RECOVERING)

    @property
    def ended(self) -> bool:
        return self in (SessionState.CLOSING, SessionState.CLOSED, SessionState.FAILED)


class BrowserStartError(ClientError):
    """The browser could not be started; the message is safe to show to clients."""

    status = 503


@dataclass(frozen=True)
class BrowserEndpoint:
    """How to reach a running browser. Plain data: it is stored in the session registry so that
    any streamer (or the operator) can attach to the browser or quit it."""

    kind: str
    """``local``, ``grid`` or ``kubernetes``."""
    cdp_url: str
    """Browser-level DevTools websocket URL."""
    webdriver_url: str = ""
    """WebDriver endpoint that owns the browser (chromedriver or Grid)."""
    webdriver_session_id: str = ""
    """The WebDriver session id, for quitting the browser over plain HTTP."""
    cdp_token: str = ""
    """Bearer token for ``cdp_url`` (a browser pod's agent demands it); secret."""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrowserEndpoint:
        return cls(**{k: str(data.get(k, "")) for k in ("kind", "cdp_url", "webdriver_url",
                                                          "webdriver_session_id", "cdp_token")})


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from a JPEG's SOF header (without decoding the image)."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height
        i += 2 + length
    raise ValueError("not a JPEG with a frame header")
