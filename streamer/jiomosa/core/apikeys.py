"""API keys (issue #13): who may create sessions once ``JIOMOSA_API_KEYS`` or
``JIOMOSA_API_KEYS_FILE`` is set, with each key's session quota and create rate.

Both hold one JSON list (docs/configuration.md)::

    [{"name": "kiosk-app", "key": "<at least 32 characters>", "max_sessions": 20,
      "creates_per_minute": 30, "create_burst": 10},
     {"name": "partner", "sha256": "<hex SHA-256 of the key>"}]

A key is compared by its SHA-256 digest, in constant time, against every configured digest
(so neither the time nor the order tells which key, or how much of one, matched). Keys are
never logged nor put in an answer: their ``name`` is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jiomosa.core.errors import ClientError

log = logging.getLogger(__name__)

KEY_MIN_CHARS = 32
KEY_MAX_CHARS = 512
NAME_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
FIELDS = ("name", "key", "sha256", "max_sessions", "creates_per_minute", "create_burst")
DEFAULT_CREATE_BURST = 5
RECHECK = 5.0
"""Seconds between looks at the key file (a mounted Secret is updated in place)."""


class Unauthorized(ClientError):
    """401: creating a session needs an API key, and none (or no valid one) was given."""

    status = 401


@dataclass(frozen=True)
class ApiKey:
    """One configured key: its name, the SHA-256 of the key, and its limits (0: none beyond
    the streamer's own)."""

    name: str
    digest: bytes = field(repr=False)
    max_sessions: int = 0
    """Live sessions created with this key, at most (per streamer); 0: no quota."""
    creates_per_minute: float = 0.0
    """Creates a minute (a token bucket); 0: no rate limit."""
    create_burst: int = DEFAULT_CREATE_BURST
    """Creates in a row before the rate applies."""


def digest(key: str) -> bytes:
    # Header values that are not UTF-8 reach us as surrogates: compare the bytes sent.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def offered_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request offers: ``X-API-Key: <key>``, else ``Authorization: Bearer <key>``."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    scheme, _, rest = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        return rest.strip()
    return None


class KeyRing:
    """The configured keys, looked up by the key a client offers."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self.keys = tuple(keys)

    def match(self, offered: str | None) -> ApiKey | None:
        if offered is None:
            return None
        wanted = digest(offered)
        found: ApiKey | None = None
        for key in self.keys:  # every digest is compared, whichever matches
            if hmac.compare_digest(wanted, key.digest):
                found = key
        return found


# ----------------------------------------------------------------------------- reading
def parse_api_keys(text: str, source: str) -> tuple[ApiKey, ...]:
    """The keys of one JSON document; ValueError says what is wrong and where (``source``
    names the variable or file), never quoting a key."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        message = getattr(exc, "msg", "bad JSON")
        raise ValueError(f"{source}: not valid JSON ({message})") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{source}: must be a non-empty JSON list of keys")
    return tuple(_entry(item, f"{source}[{n}]") for n, item in enumerate(data))


def _entry(item: Any, where: str) -> ApiKey:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: must be an object")
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; fields: {', '.join(FIELDS)}")
    name = item.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"{where}: name must be 1-64 characters of letters, digits, "
                         "'_', '.', '@', ':', '-'")
    where = f"{where} ({name})"
    key, sha = item.get("key"), item.get("sha256")
    if (key is None) == (sha is None):
        raise ValueError(f"{where}: give either key or sha256")
    if key is not None:
        if not isinstance(key, str) or not KEY_MIN_CHARS <= len(key) <= KEY_MAX_CHARS or (
                not key.isprintable() or key != key.strip()):
            raise ValueError(f"{where}: key must be {KEY_MIN_CHARS}-{KEY_MAX_CHARS} printable "
                             "characters without surrounding spaces")
        key_digest = digest(key)
    else:
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            raise ValueError(f"{where}: sha256 must be 64 hex digits (the key's SHA-256)")
        key_digest = bytes.fromhex(sha)
    return ApiKey(name, key_digest,
                  max_sessions=int(_number(item, "max_sessions", 0, where, whole=True)),
                  creates_per_minute=_number(item, "creates_per_minute", 0.0, where),
                  create_burst=max(1, int(_number(item, "create_burst", DEFAULT_CREATE_BURST,
                                                  where, whole=True))))


def _number(item: dict[str, Any], name: str, default: float, where: str,
            whole: bool = False) -> float:
    value = item.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 <= value <= 1e6) or (whole and not float(value).is_integer()):
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{where}: {name} must be {kind} from 0 to 1000000")
    return float(value)


def check_unique(keys: Sequence[ApiKey]) -> None:
    names: set[str] = set()
    digests: set[bytes] = set()
    for key in keys:
        if key.name in names:
            raise ValueError(f"API key name {key.name!r} is used twice")
        if key.digest in digests:
            raise ValueError(f"API key {key.name!r} is the same key as another one")
        names.add(key.name)
        digests.add(key.digest)


def read_key_file(path: str) -> tuple[ApiKey, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1024 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"JIOMOSA_API_KEYS_FILE: cannot read {path}: "
                         f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    return parse_api_keys(text, f"JIOMOSA_API_KEYS_FILE ({path})")


def load_api_keys(inline: str, path: str) -> tuple[ApiKey, ...]:
    """Every key of ``JIOMOSA_API_KEYS`` and ``JIOMOSA_API_KEYS_FILE``; ValueError if bad."""
    keys: list[ApiKey] = []
    if inline.strip():
        keys += parse_api_keys(inline, "JIOMOSA_API_KEYS")
    if path:
        keys += read_key_file(path)
    check_unique(keys)
    return tuple(keys)


class KeySource:
    """The live key ring. The file is read again when it changes (checked at most every
    ``RECHECK`` seconds), so a rotated Secret takes effect without a restart; a file that
    became unreadable, empty or invalid keeps the keys that were good, with an error in the
    log: once keys are configured they stay required, a broken file never opens creates."""

    def __init__(self, inline: str, path: str, now: float) -> None:
        self._inline = inline
        self._path = path
        self.enabled = bool(inline.strip() or path)
        self._ring = KeyRing(load_api_keys(inline, path) if self.enabled else ())
        self._seen = self._signature()
        self._checked = now

    def _signature(self) -> tuple[int, int, int] | None:
        if not self._path:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def ring(self, now: float) -> KeyRing:
        if self._path and now - self._checked >= RECHECK:
            self._checked = now
            signature = self._signature()
            if signature is not None and signature != self._seen:
                self._seen = signature
                try:
                    self._ring = KeyRing(load_api_keys(self._inline, self._path))
                    log.info("API keys reloaded: %s",
                             ", ".join(k.name for k in self._ring.keys))
                except ValueError as exc:
                    log.error("API key file not reloaded, the previous keys stay: %s", exc)
        return self._ring
