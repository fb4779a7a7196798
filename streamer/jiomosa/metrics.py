"""Prometheus metrics (prometheus-client: the standard exposition format and registry; writing
the text format by hand would only re-implement it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

SESSIONS_CREATED = Counter(
    "jiomosa_sessions_created_total", "Sessions created.", registry=REGISTRY
)
SESSIONS_CLOSED = Counter(
    "jiomosa_sessions_closed_total", "Sessions closed, by reason.", ["reason"], registry=REGISTRY
)
SESSION_REJECTED = Counter(
    "jiomosa_sessions_rejected_total", "Session creations refused, by reason.", ["reason"],
    registry=REGISTRY,
)
FRAMES_CAPTURED = Counter(
    "jiomosa_frames_captured_total", "Screencast frames received from browsers.",
    registry=REGISTRY,
)
FRAMES_DELIVERED = Counter(
    "jiomosa_frames_delivered_total", "Frames sent to clients.", ["transport"], registry=REGISTRY
)
FRAMES_SKIPPED = Counter(
    "jiomosa_frames_skipped_total",
    "Frames a client never got because a newer one replaced them (latest-frame-wins).",
    ["transport"], registry=REGISTRY,
)
BYTES_SENT = Counter(
    "jiomosa_frame_bytes_sent_total", "Frame bytes sent to clients.", ["transport"],
    registry=REGISTRY,
)
QUALITY_CHANGES = Counter(
    "jiomosa_quality_changes_total", "Per-client quality changes, by reason.", ["reason"],
    registry=REGISTRY,
)
INPUT_LATENCY = Histogram(
    "jiomosa_input_latency_seconds",
    "Time from an input event's arrival to Chrome confirming its dispatch.",
    ["type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
    registry=REGISTRY,
)
BLOCKED_REQUESTS = Counter(
    "jiomosa_blocked_requests_total",
    "Browser requests refused by the URL policy (SSRF defence).", registry=REGISTRY,
)
CREATE_SECONDS = Histogram(
    "jiomosa_session_create_seconds", "Time to create a session (browser ready).",
    buckets=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8), registry=REGISTRY,
)
BROWSER_RESTART_SECONDS = Histogram(
    "jiomosa_browser_restart_seconds",
    "Time from a session's browser dying to its new browser streaming (crash recovery).",
    buckets=(0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6), registry=REGISTRY,
)
ERRORS = Counter(
    "jiomosa_errors_total", "Errors answered to clients, by kind.", ["kind"], registry=REGISTRY
)
LIMITED = Counter(
    "jiomosa_limited_total",
    "Requests, connections and messages an abuse limit refused (or, frame_quality, served at "
    "another quality), by limit.", ["limit"], registry=REGISTRY,
)
REENCODES = Counter(
    "jiomosa_frame_reencodes_total", "JPEG re-encodes of frames to a lower quality.",
    registry=REGISTRY,
)


class LiveCollector(Collector):
    """Gauges computed at scrape time from the live sessions and clients."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, dict[str, Any]]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        sessions = GaugeMetricFamily("jiomosa_sessions", "Live sessions, by state.",
                                     labels=["state"])
        clients = GaugeMetricFamily("jiomosa_clients_connected",
                                    "Clients subscribed to a session, by transport.",
                                    labels=["transport"])
        fps_actual = GaugeMetricFamily("jiomosa_client_fps_actual",
                                       "Mean frames per second clients received over 1 s.")
        fps_target = GaugeMetricFamily("jiomosa_client_fps_target",
                                       "Mean fps cap of connected clients.")
        states: dict[str, float] = {}
        transports: dict[str, float] = {}
        actual: list[float] = []
        target: list[float] = []
        for kind, data in self._source():
            if kind == "session":
                state = str(data.get("state_name", "ready"))
                states[state] = states.get(state, 0) + 1
            elif kind == "client":
                name = str(data.get("transport_name", "socketio"))
                transports[name] = transports.get(name, 0) + 1
                actual.append(float(data["actual_fps"]))
                target.append(float(data["fps"]))
        for state, count in sorted(states.items()):
            sessions.add_metric([state], count)
        for name, count in sorted(transports.items()):
            clients.add_metric([name], count)
        fps_actual.add_metric([], sum(actual) / len(actual) if actual else 0.0)
        fps_target.add_metric([], sum(target) / len(target) if target else 0.0)
        yield from (sessions, clients, fps_actual, fps_target)
