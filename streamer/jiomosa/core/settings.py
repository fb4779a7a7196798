"""Service settings, read once from ``JIOMOSA_*`` environment variables.

Every field documents its variable; ``docs/configuration.md`` repeats the docstrings' content
and a test keeps the two in step (``tests/test_units.py::test_every_setting_is_documented``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from jiomosa.core.apikeys import load_api_keys
from jiomosa.core.limits import parse_networks

Backend = Literal["local", "grid", "kubernetes"]
StoreKind = Literal["memory", "redis"]
FrameEncoding = Literal["binary", "base64"]


class SettingsError(ValueError):
    """A ``JIOMOSA_*`` variable holds a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """All knobs of the streamer. Defaults are the embedded mode: local Chromium, memory store."""

    backend: Backend = "local"
    """``JIOMOSA_BACKEND``: where browsers run. ``local`` starts Chromium through
    ``chromedriver`` on this machine; ``grid`` asks an existing Selenium Grid or standalone
    WebDriver endpoint (``JIOMOSA_GRID_URL``); ``kubernetes`` creates BrowserSession resources."""

    grid_url: str = ""
    """``JIOMOSA_GRID_URL``: WebDriver URL of the Grid (e.g. ``http://selenium:4444``) for
    ``backend=grid``."""

    chromium_path: str = "/usr/bin/chromium"
    """``JIOMOSA_CHROMIUM``: the Chromium binary for the local backend."""

    chromedriver_path: str = "/usr/bin/chromedriver"
    """``JIOMOSA_CHROMEDRIVER``: the chromedriver binary for the local backend."""

    max_sessions: int = 8
    """``JIOMOSA_MAX_SESSIONS``: sessions this streamer serves at once; more gets 503."""

    idle_timeout: float = 300.0
    """``JIOMOSA_IDLE_TIMEOUT``: seconds without a subscriber, input or keepalive after which a
    session is closed."""

    max_duration: float = 3600.0
    """``JIOMOSA_MAX_DURATION``: seconds after creation at which a session is closed whatever
    it is doing (0 = no limit)."""

    allow_hosts: tuple[str, ...] = ()
    """``JIOMOSA_ALLOW_HOSTS``: comma-separated host names, IPs or CIDRs exempt from the
    private-network block (e.g. ``127.0.0.1,10.1.0.0/16,intranet.example``)."""

    egress_proxy: bool = True
    """``JIOMOSA_EGRESS_PROXY``: route every connection of local browsers through the
    streamer's policy-checking proxy, which also catches the WebSockets a page opens and DNS
    rebinding (``docs/security.md``); ``0`` turns it off."""

    dns_servers: tuple[str, ...] = ()
    """``JIOMOSA_DNS_SERVERS``: comma-separated DNS servers the URL policy and the egress
    proxy ask (``ip``, ``ip:port`` or ``[ipv6]:port``); empty = those of /etc/resolv.conf.
    /etc/hosts is read either way."""

    dns_timeout: float = 5.0
    """``JIOMOSA_DNS_TIMEOUT``: seconds a host-name lookup may take, waiting for a free lookup
    slot included; a host that does not answer in time does not resolve."""

    dns_max_lookups: int = 64
    """``JIOMOSA_DNS_MAX_LOOKUPS``: lookups in flight at once; more wait for a slot (within
    their timeout). Lookups of one name at the same time share one."""

    dns_max_ttl: float = 300.0
    """``JIOMOSA_DNS_MAX_TTL``: longest time, in seconds, an answer is cached (records with a
    shorter TTL are kept for their TTL)."""

    dns_negative_ttl: float = 5.0
    """``JIOMOSA_DNS_NEGATIVE_TTL``: seconds a name that did not resolve (no such name, no
    answer in time) is remembered as such."""

    jpeg_threads: int = 2
    """``JIOMOSA_JPEG_THREADS``: threads that re-encode frames to a lower JPEG quality; their
    own pool, so that re-encodes never wait behind other blocking work, nor it behind them."""

    browser_threads: int = 0
    """``JIOMOSA_BROWSER_THREADS``: threads that start and quit browsers (Selenium blocks);
    their own pool. 0 = one per browser that may exist (``JIOMOSA_MAX_SESSIONS`` plus
    ``JIOMOSA_WARM_BROWSERS``)."""

    warm_browsers: int = 1
    """``JIOMOSA_WARM_BROWSERS``: browsers kept started and ready so that a new session does
    not wait for Chromium to boot. 0 turns the pool off."""

    default_width: int = 1280
    """``JIOMOSA_DEFAULT_WIDTH``: viewport width in CSS pixels when create gives none."""

    default_height: int = 720
    """``JIOMOSA_DEFAULT_HEIGHT``: viewport height in CSS pixels when create gives none."""

    default_quality: int = 80
    """``JIOMOSA_DEFAULT_QUALITY``: JPEG quality (10-90) Chrome encodes frames with, and the
    quality a new subscriber starts at."""

    default_fps: int = 60
    """``JIOMOSA_DEFAULT_FPS``: frame-rate cap (1-60) a new subscriber starts with."""

    frame_encoding: FrameEncoding = "binary"
    """``JIOMOSA_FRAME_ENCODING``: how ``frame.image`` travels when the subscriber does not
    say: ``binary`` (Socket.IO attachment) or ``base64`` (the original's data URL, for fleets of
    old clients that cannot be updated)."""

    navigation_timeout: float = 20.0
    """``JIOMOSA_NAVIGATION_TIMEOUT``: seconds a load waits for the page's load event before it
    answers with whatever the page has reached."""

    browser_start_timeout: float = 60.0
    """``JIOMOSA_BROWSER_START_TIMEOUT``: seconds to wait for a browser to start."""

    crash_restarts: int = 3
    """``JIOMOSA_CRASH_RESTARTS``: times a session's browser is restarted after it dies
    (crash, killed) within ``JIOMOSA_CRASH_WINDOW``: the session keeps its id, its clients
    and its page. One crash more ends the session (``failed: the browser crashed N times in
    M s``). 0 = never restart: a crash ends the session at once (``failed``)."""

    crash_window: float = 60.0
    """``JIOMOSA_CRASH_WINDOW``: seconds over which ``JIOMOSA_CRASH_RESTARTS`` counts a
    session's crashes."""

    max_body_bytes: int = 64 * 1024
    """``JIOMOSA_MAX_BODY_BYTES``: largest accepted REST request body or Socket.IO message."""

    max_queued_bytes: int = 1024 * 1024
    """``JIOMOSA_MAX_QUEUED_BYTES``: bytes of answers and notices that may wait for one
    Socket.IO or plain WebSocket client that does not read them (frames apart: a client has
    at most one waiting); each waiting message counts at least 256. Past it the connection is
    closed."""

    max_text_chars: int = 4096
    """``JIOMOSA_MAX_TEXT_CHARS``: longest text accepted by one text-input event."""

    # Abuse limits (issue #13; docs/security.md "Abuse limits" says what each one answers).
    api_keys: str = field(default="", repr=False)
    """``JIOMOSA_API_KEYS``: API keys as inline JSON, a list of ``{name, key (32+ characters)
    or sha256 (hex digest of the key), max_sessions, creates_per_minute, create_burst}``. When
    this or ``JIOMOSA_API_KEYS_FILE`` is set, creating a session needs a key
    (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; 401 without a valid one) and each
    key's limits replace the per-address ones. Empty = anonymous creates, limited per address."""

    api_keys_file: str = ""
    """``JIOMOSA_API_KEYS_FILE``: a file holding the same JSON (the chart mounts a Secret
    there); read again when it changes. Empty = none."""

    trusted_proxies: tuple[str, ...] = ()
    """``JIOMOSA_TRUSTED_PROXIES``: comma-separated CIDRs of proxies whose
    ``X-Forwarded-For`` names the client (behind ingress-nginx: its pods' CIDR). Empty = the
    TCP peer is the client and ``X-Forwarded-For`` is ignored."""

    creates_per_minute: float = 10.0
    """``JIOMOSA_CREATES_PER_MINUTE``: sessions one client address may create a minute,
    anonymous creates only (a token bucket; 429 with ``Retry-After`` beyond). 0 = no limit."""

    create_burst: int = 5
    """``JIOMOSA_CREATE_BURST``: creates one client address may make in a row before
    ``JIOMOSA_CREATES_PER_MINUTE`` applies."""

    sessions_per_address: int = 3
    """``JIOMOSA_SESSIONS_PER_ADDRESS``: live sessions one client address may hold on this
    streamer, anonymous creates only (429 beyond). 0 = no quota beyond
    ``JIOMOSA_MAX_SESSIONS``."""

    input_per_second: float = 60.0
    """``JIOMOSA_INPUT_PER_SECOND``: REST input requests (click, scroll, key, text) one session
    takes a second (429 with ``Retry-After`` beyond). 0 = no limit."""

    input_burst: int = 120
    """``JIOMOSA_INPUT_BURST``: REST input requests one session takes in a row before
    ``JIOMOSA_INPUT_PER_SECOND`` applies."""

    frame_qualities: int = 4
    """``JIOMOSA_FRAME_QUALITIES``: distinct qualities ``/frame?quality=`` re-encodes one
    session's frames to within a second; a request for another quality gets the nearest one
    already in use or encoded. 0 = no limit."""

    connections_per_address: int = 32
    """``JIOMOSA_CONNECTIONS_PER_ADDRESS``: Socket.IO and plain WebSocket connections one
    client address may hold open at once (429 beyond). 0 = no limit."""

    connects_per_minute: float = 60.0
    """``JIOMOSA_CONNECTS_PER_MINUTE``: Socket.IO and plain WebSocket connections one client
    address may open a minute (429 with ``Retry-After`` beyond). 0 = no limit."""

    connect_burst: int = 20
    """``JIOMOSA_CONNECT_BURST``: connections one client address may open in a row before
    ``JIOMOSA_CONNECTS_PER_MINUTE`` applies."""

    messages_per_second: float = 100.0
    """``JIOMOSA_MESSAGES_PER_SECOND``: messages (events) one Socket.IO or plain WebSocket
    connection may send a second; more are answered ``error {message, event, retry_after}``
    and not handled. 0 = no limit."""

    message_burst: int = 200
    """``JIOMOSA_MESSAGE_BURST``: messages one connection may send in a row before
    ``JIOMOSA_MESSAGES_PER_SECOND`` applies."""

    flood_strikes: int = 50
    """``JIOMOSA_FLOOD_STRIKES``: messages past its rate a connection may send (one more is
    allowed each second) before it is closed for flooding. 0 = never closed for it."""

    rate_limit_keys: int = 10000
    """``JIOMOSA_RATE_LIMIT_KEYS``: client addresses (and sessions) each rate limit remembers
    at most; past it the least recently seen is forgotten, so that a flood of addresses
    cannot grow the streamer's memory."""

    cors_origins: str = "*"
    """``JIOMOSA_CORS_ORIGINS``: origins allowed to call the REST API and Socket.IO from a
    browser page (comma-separated, ``*`` for any)."""

    store: StoreKind = "memory"
    """``JIOMOSA_STORE``: where session routing state lives: ``memory`` (one streamer) or
    ``redis`` (a fleet)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """``JIOMOSA_REDIS_URL``: Redis for ``store=redis``."""

    streamer_id: str = ""
    """``JIOMOSA_STREAMER_ID``: this streamer's name in the fleet (leases, relay channels);
    empty = host name plus a random suffix, new at every start."""

    lease_ttl: float = 3.0
    """``JIOMOSA_LEASE_TTL``: seconds a session's ownership lease lives without renewal (renewed
    every second); after the owner dies another streamer takes the session within about this
    long plus one second."""

    namespace: str = "default"
    """``JIOMOSA_NAMESPACE``: namespace of BrowserSession resources for ``backend=kubernetes``."""

    log_format: Literal["json", "text"] = "json"
    """``JIOMOSA_LOG_FORMAT``: ``json`` (one object per line) or ``text``."""

    log_level: str = "INFO"
    """``JIOMOSA_LOG_LEVEL``: Python logging level name."""

    admin_token: str = ""
    """``JIOMOSA_ADMIN_TOKEN``: bearer token that shows whole session ids and pages in
    ``GET /api/sessions``; without it the list is redacted (a listed id would be a session
    anyone could take over). Empty = nobody sees them."""

    public_url: str = ""
    """``JIOMOSA_PUBLIC_URL``: base URL clients reach this service at, used in
    ``websocket_url``; empty = derived from the request."""

    extra_chrome_args: tuple[str, ...] = field(default=())
    """``JIOMOSA_CHROME_ARGS``: extra Chromium flags, space-separated."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``); raise SettingsError if bad."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            var = _VARS.get(f.name, "JIOMOSA_" + f.name.upper())
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, var, raw)
        try:
            settings = cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:  # pragma: no cover - dataclass signature is fixed
            raise SettingsError(str(exc)) from exc
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise SettingsError naming the variable of the first unusable value."""
        checks: list[tuple[bool, str]] = [
            (self.backend in ("local", "grid", "kubernetes"),
             "JIOMOSA_BACKEND must be local, grid or kubernetes"),
            (self.backend != "grid" or bool(self.grid_url),
             "JIOMOSA_GRID_URL is required when JIOMOSA_BACKEND=grid"),
            (self.store in ("memory", "redis"), "JIOMOSA_STORE must be memory or redis"),
            (self.max_sessions >= 1, "JIOMOSA_MAX_SESSIONS must be >= 1"),
            (self.idle_timeout > 0, "JIOMOSA_IDLE_TIMEOUT must be > 0"),
            (self.max_duration >= 0, "JIOMOSA_MAX_DURATION must be >= 0"),
            (self.warm_browsers >= 0, "JIOMOSA_WARM_BROWSERS must be >= 0"),
            (10 <= self.default_quality <= 90, "JIOMOSA_DEFAULT_QUALITY must be 10-90"),
            (1 <= self.default_fps <= 60, "JIOMOSA_DEFAULT_FPS must be 1-60"),
            (200 <= self.default_width <= 3840, "JIOMOSA_DEFAULT_WIDTH must be 200-3840"),
            (200 <= self.default_height <= 2160, "JIOMOSA_DEFAULT_HEIGHT must be 200-2160"),
            (self.frame_encoding in ("binary", "base64"),
             "JIOMOSA_FRAME_ENCODING must be binary or base64"),
            (self.log_format in ("json", "text"), "JIOMOSA_LOG_FORMAT must be json or text"),
            (self.max_body_bytes >= 1024, "JIOMOSA_MAX_BODY_BYTES must be >= 1024"),
            (self.max_queued_bytes >= 16384, "JIOMOSA_MAX_QUEUED_BYTES must be >= 16384"),
            (self.lease_ttl >= 1.5, "JIOMOSA_LEASE_TTL must be >= 1.5"),
            (self.crash_restarts >= 0, "JIOMOSA_CRASH_RESTARTS must be >= 0"),
            (self.crash_window > 0, "JIOMOSA_CRASH_WINDOW must be > 0"),
            (all(_is_dns_server(s) for s in self.dns_servers),
             "JIOMOSA_DNS_SERVERS must list IP addresses (ip, ip:port or [ipv6]:port)"),
            (self.dns_timeout > 0, "JIOMOSA_DNS_TIMEOUT must be > 0"),
            (self.dns_max_lookups >= 1, "JIOMOSA_DNS_MAX_LOOKUPS must be >= 1"),
            (self.dns_max_ttl >= 0, "JIOMOSA_DNS_MAX_TTL must be >= 0"),
            (self.dns_negative_ttl >= 0, "JIOMOSA_DNS_NEGATIVE_TTL must be >= 0"),
            (self.jpeg_threads >= 1, "JIOMOSA_JPEG_THREADS must be >= 1"),
            (self.browser_threads >= 0, "JIOMOSA_BROWSER_THREADS must be >= 0"),
            *_limit_checks(self),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise SettingsError(f"JIOMOSA_TRUSTED_PROXIES: {exc}") from None
        try:  # read here, so that a bad key list stops the service at start
            load_api_keys(self.api_keys, self.api_keys_file)
        except ValueError as exc:
            text = str(exc)
            raise SettingsError(text if text.startswith("JIOMOSA_") else
                                f"JIOMOSA_API_KEYS: {text}") from None


# Fields whose variable name is not simply JIOMOSA_<FIELD>.
_VARS = {
    "chromium_path": "JIOMOSA_CHROMIUM",
    "chromedriver_path": "JIOMOSA_CHROMEDRIVER",
    "extra_chrome_args": "JIOMOSA_CHROME_ARGS",
}


def _limit_checks(s: Settings) -> list[tuple[bool, str]]:
    """The abuse limits' entries of the validation table: rates are finite, bursts >= 1."""
    rates = [(s.creates_per_minute, "JIOMOSA_CREATES_PER_MINUTE"),
             (s.input_per_second, "JIOMOSA_INPUT_PER_SECOND"),
             (s.connects_per_minute, "JIOMOSA_CONNECTS_PER_MINUTE"),
             (s.messages_per_second, "JIOMOSA_MESSAGES_PER_SECOND")]
    bursts = [(s.create_burst, "JIOMOSA_CREATE_BURST"), (s.input_burst, "JIOMOSA_INPUT_BURST"),
              (s.connect_burst, "JIOMOSA_CONNECT_BURST"),
              (s.message_burst, "JIOMOSA_MESSAGE_BURST")]
    counts = [(s.sessions_per_address, "JIOMOSA_SESSIONS_PER_ADDRESS"),
              (s.connections_per_address, "JIOMOSA_CONNECTIONS_PER_ADDRESS"),
              (s.flood_strikes, "JIOMOSA_FLOOD_STRIKES")]
    return [
        *((0 <= rate <= 1e6, f"{var} must be 0-1000000 (0 = no limit)") for rate, var in rates),
        *((burst >= 1, f"{var} must be >= 1") for burst, var in bursts),
        *((count >= 0, f"{var} must be >= 0") for count, var in counts),
        (0 <= s.frame_qualities <= 81, "JIOMOSA_FRAME_QUALITIES must be 0-81 (0 = no limit)"),
        (s.rate_limit_keys >= 100, "JIOMOSA_RATE_LIMIT_KEYS must be >= 100"),
    ]


def _is_dns_server(entry: str) -> bool:
    """``ip``, ``ip:port`` or ``[ipv6]:port``: what c-ares takes (no names: who resolves them?)."""
    host, port = entry, "53"
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("53" if not rest else "")
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return port.isdigit() and 0 < int(port) < 65536


def env_var(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return _VARS.get(field_name, "JIOMOSA_" + field_name.upper())


def _parse(name: str, var: str, raw: str) -> object:
    default = next(f for f in dataclasses.fields(Settings) if f.name == name).default
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            sep = " " if name == "extra_chrome_args" else ","
            return tuple(p.strip() for p in raw.split(sep) if p.strip())
    except ValueError as exc:
        raise SettingsError(f"{var}: cannot read {raw!r} as {type(default).__name__}") from exc
    return raw.strip()
