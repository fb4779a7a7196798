"""The streamer's abuse limits in one place (issue #13): who a client is, who may create a
session and how often, how much input, re-encoding, connecting and messaging one client or
session may ask for. Transports ask; this answers (or raises ``RateLimited``,
``Unauthorized``, a 429 ``ClientError``). No aiohttp here: addresses and headers come in as
strings, the time from ``clock``.

Every limit is a ``JIOMOSA_*`` setting (docs/configuration.md); docs/security.md ("Abuse
limits") says which threat each answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable

from jiomosa import metrics
from jiomosa.core.apikeys import KeySource, Unauthorized, offered_key
from jiomosa.core.errors import ClientError
from jiomosa.core.limits import (
    BoundedMap,
    ConnectionCounter,
    KeyedLimiter,
    MessageLimit,
    Quota,
    RateLimited,
    RecentQualities,
    TokenBucket,
    client_address,
    parse_networks,
    retry_after,
)
from jiomosa.core.settings import Settings

log = logging.getLogger(__name__)

KEY_HELP = "send Authorization: Bearer <key> or X-API-Key: <key>"


class Guard:
    """The limits of one streamer (per-key state lives in this process: in a fleet each
    streamer counts for itself)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        now = clock()
        self._trusted = parse_networks(settings.trusted_proxies)
        self.keys = KeySource(settings.api_keys, settings.api_keys_file, now)
        cap = settings.rate_limit_keys
        self._creates = KeyedLimiter(settings.creates_per_minute / 60, settings.create_burst, cap)
        self._key_creates: dict[str, TokenBucket] = {}  # by key name: as many as keys
        self._inputs = KeyedLimiter(settings.input_per_second, settings.input_burst, cap)
        self._connects = KeyedLimiter(settings.connects_per_minute / 60, settings.connect_burst,
                                      cap)
        self.connections = ConnectionCounter(settings.connections_per_address)
        self._qualities: BoundedMap[str, RecentQualities] = BoundedMap(cap)

    # ------------------------------------------------------------------- who
    def address(self, peer: str | None, forwarded_for: str | Iterable[str] = ()) -> str:
        """The client's limits key: its address (IPv6: its /64), from ``X-Forwarded-For``
        (the header's value, or its values if it came several times) only when the peer is
        a trusted proxy."""
        forwarded = forwarded_for if isinstance(forwarded_for, str) else ",".join(forwarded_for)
        return client_address(peer, forwarded, self._trusted)

    # ------------------------------------------------------------------- creating sessions
    def admit_create(self, address: str, authorization: str | None,
                     x_api_key: str | None) -> Quota:
        """May this request create a session? The quota the new session counts against
        (``max_sessions`` 0: none), or 401 (keys configured, none valid) or 429 (rate)."""
        now = self._clock()
        if self.keys.enabled:
            offered = offered_key(authorization, x_api_key)
            key = self.keys.ring(now).match(offered)
            if key is None:
                metrics.LIMITED.labels("api_key").inc()
                log.debug("create refused from %s: %s API key", address,
                          "no" if offered is None else "an unknown")
                raise Unauthorized(f"an API key is required to create a session: {KEY_HELP}"
                                   if offered is None else "the API key is not valid")
            if key.creates_per_minute > 0:
                bucket = self._key_creates.get(key.name)
                if bucket is None or (bucket.rate, bucket.burst) != (
                        key.creates_per_minute / 60, float(key.create_burst)):
                    bucket = TokenBucket(key.creates_per_minute / 60, key.create_burst, now)
                    self._key_creates[key.name] = bucket  # new key, or its limits changed
                wait = bucket.take(now)
                if wait:
                    metrics.LIMITED.labels("create").inc()
                    raise RateLimited(
                        f"API key {key.name!r} may create {key.creates_per_minute:g} sessions "
                        f"a minute ({key.create_burst} in a row); retry in "
                        f"{retry_after(wait)} s", wait)
            return Quota("key:" + key.name, key.max_sessions, f"API key {key.name!r}")
        s = self.settings
        wait = self._creates.take(address, now)
        if wait:
            metrics.LIMITED.labels("create").inc()
            raise RateLimited(
                f"too many sessions created from your address: at most {s.create_burst} in a "
                f"row and {s.creates_per_minute:g} a minute; retry in {retry_after(wait)} s",
                wait)
        return Quota("address:" + address, s.sessions_per_address, f"address {address}")

    # ------------------------------------------------------------------- using a session
    def admit_input(self, session_id: str) -> None:
        """One REST input request for ``session_id`` (429 past its rate)."""
        wait = self._inputs.take(session_id, self._clock())
        if wait:
            metrics.LIMITED.labels("input").inc()
            raise RateLimited(
                f"too many input requests for this session: at most "
                f"{self.settings.input_per_second:g} a second; retry in {retry_after(wait)} s",
                wait)

    def frame_quality(self, session_id: str, quality: int, free: Collection[int]) -> int:
        """The quality to serve a ``/frame?quality=`` request of ``session_id`` at: the one
        asked, unless the session's frames are already re-encoded to ``frame_qualities``
        others within the second; then the nearest of those or of ``free`` (qualities that
        cost no encode: the source's and re-encodes already made)."""
        limit = self.settings.frame_qualities
        if limit <= 0:
            return quality
        now = self._clock()
        chosen = self._qualities.get(session_id, lambda: RecentQualities(limit)).choose(
            quality, now, free)
        self._qualities.prune(lambda window: window.idle(now))
        if chosen != quality:
            metrics.LIMITED.labels("frame_quality").inc()
        return chosen

    # ------------------------------------------------------------------- connections
    def check_connection(self, address: str) -> None:
        """May ``address`` open one more Socket.IO or plain WebSocket connection? Takes one
        from its connect rate; 429 when it has too many open or opens them too fast."""
        s = self.settings
        if self.connections.full(address):
            metrics.LIMITED.labels("connections").inc()
            raise ClientError(f"too many connections open from your address (at most "
                              f"{s.connections_per_address}); close one first", 429)
        wait = self._connects.take(address, self._clock())
        if wait:
            metrics.LIMITED.labels("connect").inc()
            raise RateLimited(
                f"too many connections opened from your address: at most {s.connect_burst} in "
                f"a row and {s.connects_per_minute:g} a minute; retry in {retry_after(wait)} s",
                wait)

    def connection_opened(self, address: str, conn_id: str) -> None:
        self.connections.open(address, conn_id)

    def connection_closed(self, conn_id: str) -> None:
        self.connections.close(conn_id)

    def message_limit(self) -> MessageLimit | None:
        """A new connection's message limit (None: messages are not limited)."""
        s = self.settings
        if s.messages_per_second <= 0:
            return None
        return MessageLimit(s.messages_per_second, s.message_burst, s.flood_strikes,
                            self._clock())

    def check_message(self, limit: MessageLimit | None) -> tuple[float, bool]:
        """(0.0: handle the message, else seconds until one is; close the connection)."""
        if limit is None:
            return 0.0, False
        wait, flooding = limit.check(self._clock())
        if wait:
            metrics.LIMITED.labels("message").inc()
        return wait, flooding

    def message_refused(self, wait: float) -> dict[str, object]:
        """The ``error`` payload (without ``event``) of a message refused by its rate."""
        n = retry_after(wait)
        return {"message": f"too many messages: at most {self.settings.messages_per_second:g} "
                           f"a second; retry in {n} s", "retry_after": n}
