"""Operator settings, read once from ``JIOMOSA_OPERATOR_*`` environment variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(ValueError):
    """A ``JIOMOSA_OPERATOR_*`` variable holds a value that cannot be used."""


PREFIX = "JIOMOSA_OPERATOR_"


@dataclass(frozen=True)
class OperatorSettings:
    """All knobs of the operator. Every field is set by ``JIOMOSA_OPERATOR_<FIELD>``."""

    namespaces: tuple[str, ...] = ()
    """``JIOMOSA_OPERATOR_NAMESPACES``: comma-separated namespaces to serve; empty = the whole
    cluster."""

    image: str = "selenium/standalone-chrome:latest"
    """``JIOMOSA_OPERATOR_IMAGE``: browser image for sessions whose spec names none. It must
    serve WebDriver on ``webdriver_port`` (Selenium standalone images do); pin a version in
    production."""

    image_pull_policy: str = "IfNotPresent"
    """``JIOMOSA_OPERATOR_IMAGE_PULL_POLICY``: pull policy when the spec names none."""

    webdriver_port: int = 4444
    """``JIOMOSA_OPERATOR_WEBDRIVER_PORT``: container port of the image's WebDriver endpoint."""

    vnc_port: int = 7900
    """``JIOMOSA_OPERATOR_VNC_PORT``: container port of the image's noVNC page, published in
    ``status.endpoints.vnc``; 0 = the image has none."""

    readiness_path: str = "/readyz"
    """``JIOMOSA_OPERATOR_READINESS_PATH``: HTTP path on the WebDriver port that answers 200 once
    the image can start a browser (Selenium's ``/readyz``)."""

    cpu_request: str = "500m"
    """``JIOMOSA_OPERATOR_CPU_REQUEST``: CPU request when the spec gives no resources."""

    memory_request: str = "1Gi"
    """``JIOMOSA_OPERATOR_MEMORY_REQUEST``: memory request when the spec gives no resources."""

    cpu_limit: str = ""
    """``JIOMOSA_OPERATOR_CPU_LIMIT``: CPU limit when the spec gives no resources; empty = none."""

    memory_limit: str = "2Gi"
    """``JIOMOSA_OPERATOR_MEMORY_LIMIT``: memory limit when the spec gives no resources."""

    shm_size: str = "1Gi"
    """``JIOMOSA_OPERATOR_SHM_SIZE``: size limit of the memory-backed ``/dev/shm``."""

    run_as_user: int = 1200
    """``JIOMOSA_OPERATOR_RUN_AS_USER``: uid of the browser container (``seluser`` in Selenium
    images)."""

    run_as_group: int = 1201
    """``JIOMOSA_OPERATOR_RUN_AS_GROUP``: gid of the browser container, also its fsGroup."""

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
            (bool(self.image), "JIOMOSA_OPERATOR_IMAGE must not be empty"),
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
