"""Reading client payloads (REST bodies and Socket.IO event data) into checked values.

Every function raises ``BadRequest`` with a message that is safe to show to the client.
"""

from __future__ import annotations

import math
from typing import Any

from jiomosa.core.errors import BadRequest
from jiomosa.core.settings import Settings
from jiomosa.core.types import KEYS, Viewport

__all__ = ["BadRequest", "as_object", "boolean", "integer", "number", "string", "viewport"]


def as_object(data: Any, what: str = "payload") -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return data


def number(data: dict[str, Any], name: str, default: float | None = None,
           lo: float = -1e9, hi: float = 1e9) -> float:
    value = data.get(name, default)
    if value is None:
        raise BadRequest(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name} must be a number")
    if isinstance(value, int) and not lo <= value <= hi:  # huge ints do not fit a float
        raise BadRequest(f"{name} must be between {lo:g} and {hi:g}")
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo:g} and {hi:g}")
    return value


def integer(data: dict[str, Any], name: str, lo: int, hi: int) -> int:
    value = data.get(name)
    if value is None:
        raise BadRequest(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not value.is_integer()):
        raise BadRequest(f"{name} must be a whole number")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return int(value)


def boolean(data: dict[str, Any], name: str, default: bool | None = None) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value


def string(data: dict[str, Any], name: str, max_len: int, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if len(value) > max_len:
        raise BadRequest(f"{name} is longer than {max_len} characters")
    return value


def viewport(data: dict[str, Any], settings: Settings) -> Viewport:
    """Viewport fields of a create request, flat or under ``viewport``."""
    nested = data.get("viewport")
    source = as_object(nested, "viewport") if nested is not None else data
    width = int(number(source, "width", settings.default_width, 100, 3840))
    height = int(number(source, "height", settings.default_height, 100, 2160))
    dsf_key = "deviceScaleFactor" if "deviceScaleFactor" in source else "device_scale_factor"
    dsf = number(source, dsf_key, 1.0, 0.5, 4.0)
    if width * dsf * height * dsf > 3840 * 2160:
        raise BadRequest("viewport is larger than 3840x2160 device pixels")
    mobile = boolean(source, "mobile", False)
    ua_key = "userAgent" if "userAgent" in source else "user_agent"
    ua = string(source, ua_key, 512, required=False) or ""
    if ua and not ua.isprintable():
        raise BadRequest("userAgent must be printable text")
    return Viewport(width, height, dsf, mobile, ua)


def key_name(data: dict[str, Any]) -> str:
    key = string(data, "key", 32)
    assert key is not None
    if key not in KEYS and not (len(key) == 1 and key.isprintable()):
        raise BadRequest(f"unknown key; use one character or one of: {', '.join(sorted(KEYS))}")
    return key


def text(data: dict[str, Any], settings: Settings) -> str:
    value = string(data, "text", settings.max_text_chars)
    assert value is not None
    if not value:
        raise BadRequest("text must not be empty")
    return value
