"""Operator settings, read once from ``JIOMOSA_OPERATOR_*`` environment variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from kubernetes.utils import parse_quantity

from jiomosa import __version__


class SettingsError(ValueError):
    """A ``JIOMOSA_OPERATOR_*`` variable holds a value that cannot be used."""


PREFIX = "JIOMOSA_OPERATOR_"
AGENT = "agent"
SELENIUM = "selenium"
KIND_DEFAULTS = {
    # image, uid, gid
    AGENT: (f"jiomosa.local/jiomosa-browser:{__version__}", 10001, 10001),
    SELENIUM: ("selenium/standalone-chrome:latest", 1200, 1201),
}
MIN_TOKEN_KEY = 32


@dataclass(frozen=True)
class OperatorSettings:
    """All knobs of the operator. Every field is set by ``JIOMOSA_OPERATOR_<FIELD>``."""

    namespaces: tuple[str, ...] = ()
    """``JIOMOSA_OPERATOR_NAMESPACES``: comma-separated namespaces to serve; empty = the whole
    cluster."""

    browser_kind: str = AGENT
    """``JIOMOSA_OPERATOR_BROWSER_KIND``: what the browser pods run. ``agent``: the
    ``jiomosa-browser`` image (``jiomosa browser``: Chromium behind a CDP proxy that demands the
    session's token, the URL policy enforced in the pod, one port ``agent_port``); ``selenium``:
    a Selenium standalone image (WebDriver and its ``se:cdp`` proxy on ``webdriver_port``)."""

    image: str = ""
    """``JIOMOSA_OPERATOR_IMAGE``: browser image for sessions whose spec names none; empty = the
    kind's (``jiomosa.local/jiomosa-browser:<version>``, or ``selenium/standalone-chrome:latest``
    for ``selenium``). Pin a version in production."""

    image_pull_policy: str = "IfNotPresent"
    """``JIOMOSA_OPERATOR_IMAGE_PULL_POLICY``: pull policy when the spec names none."""

    agent_port: int = 9300
    """``JIOMOSA_OPERATOR_AGENT_PORT``: the agent pod's one port (``/readyz``, ``/claim`` and the
    DevTools proxy; kind ``agent``)."""

    webdriver_port: int = 4444
    """``JIOMOSA_OPERATOR_WEBDRIVER_PORT``: container port of the image's WebDriver endpoint
    (kind ``selenium``)."""

    vnc_port: int = 7900
    """``JIOMOSA_OPERATOR_VNC_PORT``: container port of the image's noVNC page, published in
    ``status.endpoints.vnc``; 0 = the image has none (kind ``selenium``)."""

    readiness_path: str = "/readyz"
    """``JIOMOSA_OPERATOR_READINESS_PATH``: HTTP path on the pod's port that answers 200 once
    the browser is usable (the agent's ``/readyz``, Selenium's ``/readyz``)."""

    cpu_request: str = "500m"
    """``JIOMOSA_OPERATOR_CPU_REQUEST``: CPU request unless the spec's resources give one."""

    memory_request: str = "1Gi"
    """``JIOMOSA_OPERATOR_MEMORY_REQUEST``: memory request unless the spec's resources give
    one."""

    cpu_limit: str = ""
    """``JIOMOSA_OPERATOR_CPU_LIMIT``: CPU limit unless the spec's resources give one; empty =
    none."""

    memory_limit: str = "2Gi"
    """``JIOMOSA_OPERATOR_MEMORY_LIMIT``: memory limit unless the spec's resources give one;
    empty = ``JIOMOSA_OPERATOR_MAX_MEMORY``."""

    allowed_images: tuple[str, ...] = ()
    """``JIOMOSA_OPERATOR_ALLOWED_IMAGES``: comma-separated images ``spec.image`` may name besides
    ``JIOMOSA_OPERATOR_IMAGE`` (always allowed); an entry ending in ``*`` allows every image that
    starts with what comes before it (``registry.example/chrome:*``). Any other image fails the
    session (``SpecNotAllowed``): the image chooses the code that runs and the endpoint the
    streamers connect to."""

    max_cpu: str = "2"
    """``JIOMOSA_OPERATOR_MAX_CPU``: the most CPU a spec's ``resources`` may request or limit."""

    max_memory: str = "4Gi"
    """``JIOMOSA_OPERATOR_MAX_MEMORY``: the most memory a spec's ``resources`` may request or
    limit; also the memory limit when ``JIOMOSA_OPERATOR_MEMORY_LIMIT`` is empty (a browser pod
    always has one)."""

    allowed_node_selectors: tuple[str, ...] = ()
    """``JIOMOSA_OPERATOR_ALLOWED_NODE_SELECTORS``: comma-separated ``key=value`` node labels (or
    a bare ``key``: any value) a spec's ``nodeSelector`` may name; empty = no ``nodeSelector``
    at all."""

    allowed_tolerations: tuple[str, ...] = ()
    """``JIOMOSA_OPERATOR_ALLOWED_TOLERATIONS``: comma-separated taint keys a spec's
    ``tolerations`` may tolerate (a toleration without a key, which tolerates every taint, never
    is); empty = no ``tolerations`` at all."""

    shm_size: str = "1Gi"
    """``JIOMOSA_OPERATOR_SHM_SIZE``: size limit of the memory-backed ``/dev/shm``."""

    tmp_size: str = "1Gi"
    """``JIOMOSA_OPERATOR_TMP_SIZE``: size limit of the ``emptyDir`` on ``/tmp`` of an agent
    pod (its root filesystem is read-only; ``/tmp`` is ``HOME`` and Chromium's profile)."""

    run_as_user: int = 0
    """``JIOMOSA_OPERATOR_RUN_AS_USER``: uid of the browser container; 0 = the kind's (10001 in
    the ``jiomosa-browser`` image, 1200 ``seluser`` in Selenium images). Never root."""

    run_as_group: int = 0
    """``JIOMOSA_OPERATOR_RUN_AS_GROUP``: gid of the browser container, also its fsGroup; 0 =
    the kind's (10001, or 1201 for Selenium images)."""

    token_key: str = field(default="", repr=False)
    """``JIOMOSA_OPERATOR_TOKEN_KEY``: the secret key (at least 32 characters) every CDP token is
    derived from: a session's is HMAC-SHA256(key, its uid), a warm-pool pod's claim token
    HMAC-SHA256(key, its namespace and name). Required for kind ``agent``; the chart generates
    it once into a Secret that only the operator mounts. The operator never reads a Secret: it
    derives the tokens it needs."""

    warm_pool: int = 2
    """``JIOMOSA_OPERATOR_WARM_POOL``: ready agent pods kept waiting in each pool namespace; a new
    BrowserSession that a pool pod can serve claims one instead of starting a pod (kind
    ``agent``); 0 = no pool."""

    pool_namespaces: tuple[str, ...] = ()
    """``JIOMOSA_OPERATOR_POOL_NAMESPACES``: comma-separated namespaces that get a warm pool;
    empty = every namespace of ``JIOMOSA_OPERATOR_NAMESPACES`` (none for a cluster-wide
    operator)."""

    pool_interval: float = 5.0
    """``JIOMOSA_OPERATOR_POOL_INTERVAL``: seconds between looks at the pool (a claim also
    triggers one at once)."""

    pool_start_timeout: float = 120.0
    """``JIOMOSA_OPERATOR_POOL_START_TIMEOUT``: seconds a pool pod may take to become ready
    before it is replaced."""

    service_account: str = ""
    """``JIOMOSA_OPERATOR_SERVICE_ACCOUNT``: service account of browser pods; empty = the
    namespace's default (its token is never mounted either way)."""

    poll_interval: float = 1.0
    """``JIOMOSA_OPERATOR_POLL_INTERVAL``: seconds between looks at a starting pod (how soon an
    image pull error or readiness is noticed)."""

    check_interval: float = 5.0
    """``JIOMOSA_OPERATOR_CHECK_INTERVAL``: seconds between checks of a Ready session (pod and
    browser health, idle and max-duration expiry)."""

    start_timeout: float = 300.0
    """``JIOMOSA_OPERATOR_START_TIMEOUT``: seconds from creation for a session to become Ready
    (pod scheduled, image pulled, browser open) before it fails with ``StartTimeout``."""

    browser_start_timeout: float = 60.0
    """``JIOMOSA_OPERATOR_BROWSER_START_TIMEOUT``: seconds for the WebDriver endpoint of a ready
    pod to open the browser session."""

    browser_start_attempts: int = 3
    """``JIOMOSA_OPERATOR_BROWSER_START_ATTEMPTS``: failed browser openings on a ready pod after
    which the session fails with ``BrowserStartFailed``."""

    health_failures: int = 3
    """``JIOMOSA_OPERATOR_HEALTH_FAILURES``: consecutive failed browser health checks after which
    a Ready session fails with ``BrowserGone``."""

    navigation_timeout: float = 20.0
    """``JIOMOSA_OPERATOR_NAVIGATION_TIMEOUT``: seconds a navigation to ``spec.url`` waits for the
    page's load event."""

    delete_timeout: float = 60.0
    """``JIOMOSA_OPERATOR_DELETE_TIMEOUT``: seconds a deleted session waits for its pod to be gone
    before its finalizer is released anyway (the pod's owner reference still collects it)."""

    allow_hosts: tuple[str, ...] = ()
    """``JIOMOSA_OPERATOR_ALLOW_HOSTS``: comma-separated hosts, IPs or CIDRs ``spec.url`` may name
    although they are private (the streamer's URL policy, same syntax as
    ``JIOMOSA_ALLOW_HOSTS``)."""

    liveness_host: str = "0.0.0.0"
    """``JIOMOSA_OPERATOR_LIVENESS_HOST``: address of the liveness endpoint."""

    liveness_port: int = 8080
    """``JIOMOSA_OPERATOR_LIVENESS_PORT``: port of the liveness endpoint (``GET /healthz``);
    0 = no endpoint."""

    trust_port_annotation: bool = False
    """``JIOMOSA_OPERATOR_TRUST_PORT_ANNOTATION``: take a pod's WebDriver port from its
    ``jiomosa.io/webdriver-port`` annotation. Only for single-host setups where every "pod" shares
    one network (the tests, which play the kubelet); never needed in a cluster."""

    def __post_init__(self) -> None:
        # The kind's defaults for what was left empty (a frozen dataclass: set once, here).
        image, uid, gid = KIND_DEFAULTS.get(self.browser_kind, KIND_DEFAULTS[AGENT])
        for name, value in (("image", image), ("run_as_user", uid), ("run_as_group", gid)):
            if not getattr(self, name):
                object.__setattr__(self, name, value)

    @property
    def agent(self) -> bool:
        """The browser pods run ``jiomosa browser`` (not Selenium)."""
        return self.browser_kind == AGENT

    @property
    def pool_size(self) -> int:
        """Warm pool pods per pool namespace (none for Selenium pods)."""
        return self.warm_pool if self.agent else 0

    @property
    def served_pool_namespaces(self) -> tuple[str, ...]:
        """Where the pool lives (with a pool size of 0: where leftover pool pods are deleted)."""
        return self.pool_namespaces or self.namespaces

    @property
    def liveness_endpoint(self) -> str | None:
        if not self.liveness_port:
            return None
        return f"http://{self.liveness_host}:{self.liveness_port}/healthz"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Build settings from ``env`` (default ``os.environ``); raise SettingsError if bad."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            var = env_var(f.name)
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f, var, raw)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.browser_kind in (AGENT, SELENIUM),
             "JIOMOSA_OPERATOR_BROWSER_KIND must be agent or selenium"),
            (not self.agent or len(self.token_key) >= MIN_TOKEN_KEY,
             f"JIOMOSA_OPERATOR_TOKEN_KEY must hold at least {MIN_TOKEN_KEY} characters with "
             "JIOMOSA_OPERATOR_BROWSER_KIND=agent (the CDP tokens are derived from it)"),
            (bool(self.image), "JIOMOSA_OPERATOR_IMAGE must not be empty"),
            (0 < self.agent_port < 65536, "JIOMOSA_OPERATOR_AGENT_PORT must be a port"),
            (self.run_as_user > 0 and self.run_as_group > 0,
             "JIOMOSA_OPERATOR_RUN_AS_USER and _RUN_AS_GROUP must not be root"),
            (self.warm_pool >= 0, "JIOMOSA_OPERATOR_WARM_POOL must be >= 0"),
            (self.pool_interval > 0, "JIOMOSA_OPERATOR_POOL_INTERVAL must be > 0"),
            (self.pool_start_timeout > 0, "JIOMOSA_OPERATOR_POOL_START_TIMEOUT must be > 0"),
            (self.image_pull_policy in ("Always", "IfNotPresent", "Never"),
             "JIOMOSA_OPERATOR_IMAGE_PULL_POLICY must be Always, IfNotPresent or Never"),
            (0 < self.webdriver_port < 65536, "JIOMOSA_OPERATOR_WEBDRIVER_PORT must be a port"),
            (0 <= self.vnc_port < 65536, "JIOMOSA_OPERATOR_VNC_PORT must be a port or 0"),
            (self.readiness_path.startswith("/"),
             "JIOMOSA_OPERATOR_READINESS_PATH must start with /"),
            (self.poll_interval > 0, "JIOMOSA_OPERATOR_POLL_INTERVAL must be > 0"),
            (self.check_interval > 0, "JIOMOSA_OPERATOR_CHECK_INTERVAL must be > 0"),
            (self.start_timeout > 0, "JIOMOSA_OPERATOR_START_TIMEOUT must be > 0"),
            (self.browser_start_timeout > 0,
             "JIOMOSA_OPERATOR_BROWSER_START_TIMEOUT must be > 0"),
            (self.browser_start_attempts >= 1,
             "JIOMOSA_OPERATOR_BROWSER_START_ATTEMPTS must be >= 1"),
            (self.health_failures >= 1, "JIOMOSA_OPERATOR_HEALTH_FAILURES must be >= 1"),
            (self.navigation_timeout > 0, "JIOMOSA_OPERATOR_NAVIGATION_TIMEOUT must be > 0"),
            (self.delete_timeout >= 0, "JIOMOSA_OPERATOR_DELETE_TIMEOUT must be >= 0"),
            (0 <= self.liveness_port < 65536, "JIOMOSA_OPERATOR_LIVENESS_PORT must be a port"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        maxima = {"cpu": self.max_cpu, "memory": self.max_memory}
        for var, value, kind in [
                ("MAX_CPU", self.max_cpu, "cpu"), ("MAX_MEMORY", self.max_memory, "memory"),
                ("CPU_REQUEST", self.cpu_request, "cpu"), ("CPU_LIMIT", self.cpu_limit, "cpu"),
                ("MEMORY_REQUEST", self.memory_request, "memory"),
                ("MEMORY_LIMIT", self.memory_limit, "memory")]:
            if not value and not var.startswith("MAX"):
                continue
            amount = quantity(value)
            if amount is None or amount <= 0:
                raise SettingsError(f"{PREFIX}{var} must be a positive quantity, not {value!r}")
            if amount > (quantity(maxima[kind]) or 0):
                raise SettingsError(f"{PREFIX}{var} is above {PREFIX}MAX_{kind.upper()}")
        if self.namespaces and not set(self.pool_namespaces) <= set(self.namespaces):
            raise SettingsError(f"{PREFIX}POOL_NAMESPACES must be among {PREFIX}NAMESPACES "
                                "(a pool pod serves only sessions of its namespace)")
        for entry in self.allowed_node_selectors:
            if not entry.partition("=")[0]:
                raise SettingsError(f"{PREFIX}ALLOWED_NODE_SELECTORS: {entry!r} has no key")


def quantity(value: object) -> Decimal | None:
    """A Kubernetes quantity (``500m``, ``2Gi``, ``1``) as a number; None if unreadable."""
    if isinstance(value, bool):
        return None
    try:
        return Decimal(parse_quantity(value))
    except (ValueError, TypeError, ArithmeticError):
        return None


def env_var(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return PREFIX + field_name.upper()


def _parse(f: dataclasses.Field[object], var: str, raw: str) -> object:
    default = f.default
    try:
        if isinstance(default, bool):
            value = raw.strip().lower()
            if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return value in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
    except ValueError as exc:
        raise SettingsError(f"{var}: cannot read {raw!r} as {type(default).__name__}") from exc
    return raw.strip()
