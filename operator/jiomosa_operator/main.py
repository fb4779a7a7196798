"""Run the operator: ``jiomosa operator`` (or ``python -m jiomosa_operator``)."""

from __future__ import annotations

import logging
import sys

import kopf

from jiomosa_operator.handlers import BrowserSessionOperator
from jiomosa_operator.settings import OperatorSettings, SettingsError


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    BrowserSessionOperator(settings).register(registry)
    return registry


def run(settings: OperatorSettings) -> int:
    """Serve BrowserSessions until SIGINT/SIGTERM. One replica: no peering."""
    kopf.run(
        registry=build_registry(settings),
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=settings.liveness_endpoint,
    )
    return 0


def _tame_kopf(record: logging.LogRecord) -> bool:
    """Kopf's log lines, fit for a service log: no settings object on every line, expected
    waits (TemporaryError) not at ERROR, the timer's heartbeat only at DEBUG."""
    record.__dict__.pop("settings", None)
    record.__dict__.pop("k8s_skip", None)
    if record.name == "kopf.objects":
        message = record.getMessage()
        if "failed temporarily" in message:
            record.levelno, record.levelname = logging.INFO, "INFO"
        elif message.startswith("Timer ") and message.endswith(" succeeded."):
            return logging.getLogger().isEnabledFor(logging.DEBUG)
    return True


def main() -> int:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_tame_kopf)
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        print(f"jiomosa operator: bad configuration: {exc}", file=sys.stderr)
        return 2
    return run(settings)
