"""Pure judgements: what the operator concludes from a pod (its state, its endpoints) and
writes to a BrowserSession's status (phase, conditions, expiry), as functions of plain data.
No I/O here; tested without a cluster (tests/operator/test_operator_builders.py)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from jiomosa.k8s import model
from jiomosa.k8s.model import fmt_time, parse_time
from jiomosa_operator.builders import SessionSpec
from jiomosa_operator.settings import OperatorSettings

# Waiting reasons of a container that will not get better by waiting: the session fails at once.
FAIL_FAST_WAITING = frozenset({
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "ImageInspectError",
    "RegistryUnavailable",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
})


# ----------------------------------------------------------------------------- pod state
@dataclass(frozen=True)
class PodState:
    """What a pod means for its session."""

    kind: str
    """``missing``, ``pending`` (not running yet), ``starting`` (running, not ready), ``ready``,
    ``failed`` (will not recover) or ``terminating``."""
    reason: str = ""
    message: str = ""
    ip: str = ""

    @property
    def ready(self) -> bool:
        return self.kind == "ready"


def pod_state(pod: Mapping[str, Any] | None) -> PodState:
    """Judge a pod from what its kubelet reported."""
    if pod is None:
        return PodState("missing", "PodMissing", "the browser pod does not exist")
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ip = str(status.get("podIP") or "")
    if meta.get("deletionTimestamp"):
        return PodState("terminating", "PodDeleted", "the browser pod is being deleted", ip)
    phase = status.get("phase") or "Pending"
    containers = [*(status.get("initContainerStatuses") or []),
                  *(status.get("containerStatuses") or [])]
    for cs in containers:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FAIL_FAST_WAITING:
            message = waiting.get("message") or waiting["reason"]
            return PodState("failed", waiting["reason"], f"{cs.get('name')}: {message}", ip)
    terminated: list[tuple[str, dict[str, Any]]] = [
        (str(cs.get("name")), dict((cs.get("state") or {})["terminated"]))
        for cs in containers if (cs.get("state") or {}).get("terminated")]
    if phase in ("Failed", "Succeeded") or terminated:
        reason, message = "BrowserExited", "the browser container exited"
        if terminated:
            name, term = terminated[0]
            reason = term.get("reason") or reason
            message = f"{name}: exit code {term.get('exitCode')}"
            if term.get("message"):
                message += f": {str(term['message']).strip()[-300:]}"
        if status.get("reason"):  # pod-level: Evicted, DeadlineExceeded, ...
            reason = status["reason"]
            message = status.get("message") or message
        return PodState("failed", reason, message, ip)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if phase == "Running":
        if (conditions.get("Ready") or {}).get("status") == "True" and ip:
            return PodState("ready", "PodReady", "the browser pod is ready", ip)
        return PodState("starting", "ContainersNotReady",
                        "the browser container is running, not ready yet", ip)
    scheduled = conditions.get("PodScheduled") or {}
    if scheduled.get("status") == "False":
        return PodState("pending", scheduled.get("reason") or "Unschedulable",
                        scheduled.get("message") or "the pod cannot be scheduled yet", ip)
    for cs in containers:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return PodState("pending", waiting["reason"],
                            waiting.get("message") or f"{cs.get('name')}: {waiting['reason']}",
                            ip)
    if phase == "Unknown":
        return PodState("pending", "PodUnknown", "the pod's node does not report", ip)
    return PodState("pending", "PodPending", "waiting for the pod to start", ip)


# ----------------------------------------------------------------------------- endpoints
def _pod_url(pod: Mapping[str, Any], settings: OperatorSettings, port: int,
             annotation: str) -> str:
    ip = str((pod.get("status") or {}).get("podIP") or "")
    if not ip:
        raise ValueError("the pod has no IP yet")
    if settings.trust_port_annotation:
        annotated = ((pod.get("metadata") or {}).get("annotations") or {}).get(annotation)
        if annotated and str(annotated).isdigit() and 0 < int(annotated) < 65536:
            port = int(annotated)
    return f"http://{_host(ip)}:{port}"


def webdriver_url(pod: Mapping[str, Any], settings: OperatorSettings) -> str:
    """Where a Selenium pod's WebDriver endpoint is (``http://<podIP>:<port>``)."""
    return _pod_url(pod, settings, settings.webdriver_port, model.ANNOTATION_WEBDRIVER_PORT)


def agent_url(pod: Mapping[str, Any], settings: OperatorSettings) -> str:
    """Where an agent pod's one port is (``http://<podIP>:<port>``)."""
    return _pod_url(pod, settings, settings.agent_port, model.ANNOTATION_AGENT_PORT)


def agent_endpoints(agent: str, token_secret: str) -> dict[str, str]:
    """``status.endpoints`` of an agent pod: its browser's DevTools path (the agent serves the
    browser whatever its id) and the Secret holding the token it demands."""
    parts = urllib.parse.urlsplit(agent)
    return {"cdp": f"ws://{parts.netloc}/devtools/browser", "cdpTokenSecret": token_secret}


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def normalize_cdp_url(cdp_url: str, webdriver: str) -> str:
    """Selenium's ``se:cdp`` URL names the host the server thinks it has; the CDP proxy is on
    the WebDriver port, so the URL is rebased on the address the operator reached."""
    parts = urllib.parse.urlsplit(cdp_url)
    if "/se/cdp" not in parts.path:
        return cdp_url
    base = urllib.parse.urlsplit(webdriver)
    scheme = "wss" if base.scheme == "https" else "ws"
    return urllib.parse.urlunsplit((scheme, base.netloc, parts.path, parts.query, ""))


def endpoints_status(webdriver: str, session_id: str, cdp_url: str, pod_ip: str,
                     settings: OperatorSettings) -> dict[str, str]:
    out = {
        "webdriver": webdriver,
        "webdriverSessionId": session_id,
        "cdp": normalize_cdp_url(cdp_url, webdriver),
    }
    if settings.vnc_port and pod_ip:
        out["vnc"] = f"http://{_host(pod_ip)}:{settings.vnc_port}/"
    return out


def stray_sessions(grid_status: Mapping[str, Any]) -> list[str]:
    """WebDriver session ids a Selenium ``/status`` document lists (a bare chromedriver lists
    none). On a session's own pod, any session the status does not record is an orphan."""
    out: list[str] = []
    value = grid_status.get("value") or {}
    for node in value.get("nodes") or []:
        for slot in node.get("slots") or []:
            session = slot.get("session") or {}
            if session.get("sessionId"):
                out.append(str(session["sessionId"]))
    return out


# ----------------------------------------------------------------------------- status
def set_condition(conditions: Iterable[Mapping[str, Any]], type_: str, status: bool,
                  reason: str, message: str, now: datetime,
                  generation: int | None = None) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; its lastTransitionTime moves only when its status
    does."""
    value = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        cond = dict(cond)
        if cond.get("type") == type_:
            found = True
            if cond.get("status") != value or not cond.get("lastTransitionTime"):
                cond["lastTransitionTime"] = fmt_time(now)
            cond.update(status=value, reason=reason, message=message)
            if generation is not None:
                cond["observedGeneration"] = generation
        out.append(cond)
    if not found:
        cond = {"type": type_, "status": value, "reason": reason, "message": message,
                "lastTransitionTime": fmt_time(now)}
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def phase_status(current: Mapping[str, Any], phase: str, reason: str, message: str,
                 now: datetime, generation: int | None = None,
                 pod_ready: bool | None = None) -> dict[str, Any]:
    """The status patch that puts a session in ``phase``, conditions included."""
    conditions: list[dict[str, Any]] = list(current.get("conditions") or [])
    if pod_ready is not None:
        conditions = set_condition(conditions, "PodReady", pod_ready,
                                   "PodReady" if pod_ready else reason,
                                   "the browser pod is ready" if pod_ready else message,
                                   now, generation)
    conditions = set_condition(conditions, "Ready", phase == model.READY, reason, message,
                               now, generation)
    patch: dict[str, Any] = {"phase": phase, "reason": reason, "message": message,
                             "conditions": conditions}
    if generation is not None:
        patch["observedGeneration"] = generation
    if phase in model.FINISHED_PHASES and not current.get("endedAt"):
        patch["endedAt"] = fmt_time(now)
    return patch


def is_transition(current: Mapping[str, Any], phase: str, reason: str) -> bool:
    """Whether moving to (phase, reason) is news (worth an Event)."""
    return current.get("phase") != phase or current.get("reason") != reason


# ----------------------------------------------------------------------------- expiry
def last_activity(annotations: Mapping[str, str], status: Mapping[str, Any]) -> datetime | None:
    """The later of the activity annotation and the moment the session became Ready."""
    times = [t for t in (parse_time(annotations.get(model.ANNOTATION_ACTIVITY)),
                         parse_time(status.get("readyAt"))) if t is not None]
    return max(times) if times else None


def expiry(spec: SessionSpec, created: datetime | None, activity: datetime | None,
           now: datetime) -> tuple[str, str] | None:
    """``(reason, message)`` when a Ready session has expired, else None."""
    if spec.max_duration and created is not None and (
            now - created >= timedelta(seconds=spec.max_duration)):
        return "MaxDurationReached", f"the session reached its {spec.max_duration} s maximum"
    if spec.idle_timeout and activity is not None and (
            now - activity >= timedelta(seconds=spec.idle_timeout)):
        return "IdleTimeout", f"no activity for {spec.idle_timeout} s"
    return None


# ----------------------------------------------------------------------------- warm pool
@dataclass(frozen=True)
class PoolPlan:
    """What to do to a namespace's warm pool: delete these pods, create that many."""

    delete: tuple[str, ...] = ()
    create: int = 0
    ready: tuple[str, ...] = field(default=())
    """Warm pods a session may claim now."""


def plan_pool(pods: Iterable[Mapping[str, Any]], size: int, now: datetime,
              start_timeout: float) -> PoolPlan:
    """Keep ``size`` live warm pods: delete the failed ones, those that did not become ready
    within ``start_timeout`` seconds (replaced) and those beyond ``size`` (pods that are not
    ready yet go first, then the youngest), and create what is missing. Pods being deleted
    count for nothing."""
    delete: list[str] = []
    live: list[tuple[bool, str, str]] = []  # (ready, created, name)
    for pod in pods:
        meta = pod.get("metadata") or {}
        name = str(meta.get("name") or "")
        if meta.get("deletionTimestamp"):
            continue
        state = pod_state(pod)
        created = parse_time(meta.get("creationTimestamp"))
        stale = (not state.ready and created is not None
                 and (now - created).total_seconds() > start_timeout)
        if state.kind == "failed" or stale:
            delete.append(name)
        else:
            live.append((state.ready, str(meta.get("creationTimestamp") or ""), name))
    # Keep the ready and the oldest first.
    live.sort(key=lambda item: (not item[0], item[1], item[2]))
    kept, extra = live[:size], live[size:]
    delete += [name for _, _, name in extra]
    return PoolPlan(delete=tuple(delete), create=max(0, size - len(kept)),
                    ready=tuple(name for ready, _, name in kept if ready))
