"""Pure builders and judgements: every manifest the operator writes and every decision it takes
about a pod or a session, as functions of plain data. No I/O here; tested by dict equality
without a cluster (tests/operator/test_operator_builders.py)."""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from jiomosa.core.types import Viewport
from jiomosa.k8s import model
from jiomosa.k8s.model import fmt_time, parse_time
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

URL_RE = re.compile(r"^(https?://\S+|about:blank)$")
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
SESSION_TIMEOUT_UNLIMITED = 7 * 24 * 3600


class SpecError(ValueError):
    """The spec cannot be run (the schema normally rejects it first)."""


# ----------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class SessionSpec:
    """A BrowserSession's spec with every default filled in."""

    url: str = "about:blank"
    width: int = 1280
    height: int = 720
    device_scale_factor: float = 1.0
    mobile: bool = False
    user_agent: str = ""
    idle_timeout: int = 300
    max_duration: int = 3600
    image: str = ""
    image_pull_policy: str = ""
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()

    @classmethod
    def parse(cls, spec: Mapping[str, Any], settings: OperatorSettings) -> SessionSpec:
        """Read ``spec``; raise SpecError for what the schema should have refused."""
        viewport = spec.get("viewport") or {}
        try:
            parsed = cls(
                url=str(spec.get("url") or "about:blank"),
                width=_int(viewport.get("width", 1280)),
                height=_int(viewport.get("height", 720)),
                device_scale_factor=float(viewport.get("deviceScaleFactor", 1.0)),
                mobile=bool(viewport.get("mobile", False)),
                user_agent=str(spec.get("userAgent") or ""),
                idle_timeout=_int(spec.get("idleTimeoutSeconds", 300)),
                max_duration=_int(spec.get("maxDurationSeconds", 3600)),
                image=str(spec.get("image") or settings.image),
                image_pull_policy=str(spec.get("imagePullPolicy") or settings.image_pull_policy),
                resources=dict(spec.get("resources") or {}),
                node_selector={str(k): str(v) for k, v in (spec.get("nodeSelector") or {}).items()},
                tolerations=tuple(dict(t) for t in spec.get("tolerations") or ()),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise SpecError(f"unreadable spec: {exc}") from None
        parsed.check()
        return parsed

    def check(self) -> None:
        problems = []
        if not URL_RE.match(self.url) or len(self.url) > 8192:
            problems.append("url must be an http(s) URL or about:blank")
        if not (100 <= self.width <= 3840 and 100 <= self.height <= 2160):
            problems.append("viewport must be 100-3840 x 100-2160")
        if not 0.5 <= self.device_scale_factor <= 4.0:
            problems.append("viewport.deviceScaleFactor must be 0.5-4")
        elif self.width * self.height * self.device_scale_factor ** 2 > 3840 * 2160:
            problems.append("viewport is larger than 3840x2160 device pixels")
        if len(self.user_agent) > 512 or not all(" " <= c <= "~" for c in self.user_agent):
            problems.append("userAgent must be printable ASCII, at most 512 characters")
        if self.idle_timeout < 0 or self.max_duration < 0:
            problems.append("timeouts must be >= 0")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            problems.append("imagePullPolicy must be Always, IfNotPresent or Never")
        if problems:
            raise SpecError("; ".join(problems))

    @property
    def viewport(self) -> Viewport:
        return Viewport(self.width, self.height, self.device_scale_factor, self.mobile,
                        self.user_agent)

    def chrome_args(self) -> tuple[str, ...]:
        """Chromium flags on top of the streamer's (``jiomosa.browser.driver.CHROME_ARGS``):
        what must hold for the whole browser, whoever attaches to it later."""
        args: list[str] = []
        if self.device_scale_factor != 1.0:
            args.append(f"--force-device-scale-factor={self.device_scale_factor:g}")
        if self.user_agent:
            args.append(f"--user-agent={self.user_agent}")
        return tuple(args)


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a number is required")
    number = float(value)
    if number != int(number):
        raise ValueError(f"{value!r} is not an integer")
    return int(number)


# ----------------------------------------------------------------------------- the pod
def pod_name(session_name: str) -> str:
    """``<session>-browser``, shortened with a digest so that it stays a DNS label."""
    name = f"{session_name}-browser"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(session_name.encode()).hexdigest()[:8]
    return f"{session_name[:46].rstrip('.-')}-{digest}-browser"


def owner_reference(session: Mapping[str, Any]) -> dict[str, Any]:
    meta = session["metadata"]
    return {
        "apiVersion": model.API_VERSION,
        "kind": model.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_labels(session: Mapping[str, Any]) -> dict[str, str]:
    meta = session["metadata"]
    labels = {
        model.LABEL_NAME: "jiomosa-browser",
        model.LABEL_MANAGED_BY: model.MANAGED_BY,
        model.LABEL_SESSION_UID: str(meta["uid"]),
    }
    if LABEL_VALUE_RE.match(meta["name"]):
        labels[model.LABEL_SESSION] = meta["name"]
    return labels


def default_resources(settings: OperatorSettings) -> dict[str, dict[str, str]]:
    requests = {"cpu": settings.cpu_request, "memory": settings.memory_request}
    limits = {"cpu": settings.cpu_limit, "memory": settings.memory_limit}
    out = {"requests": {k: v for k, v in requests.items() if v},
           "limits": {k: v for k, v in limits.items() if v}}
    return {k: v for k, v in out.items() if v}


def selenium_session_timeout(spec: SessionSpec) -> int:
    """Selenium ends a WebDriver session after this many seconds without WebDriver commands;
    ours are driven over CDP, so the timeout must outlast the whole session."""
    return spec.max_duration + 600 if spec.max_duration else SESSION_TIMEOUT_UNLIMITED


def build_pod(session: Mapping[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """The one pod that runs a session's browser."""
    meta = session["metadata"]
    spec = SessionSpec.parse(session.get("spec") or {}, settings)
    ports = [{"name": "webdriver", "containerPort": settings.webdriver_port, "protocol": "TCP"}]
    if settings.vnc_port:
        ports.append({"name": "novnc", "containerPort": settings.vnc_port, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": model.CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "ports": ports,
        "env": [
            # One browser per pod: the operator opens exactly one session.
            {"name": "SE_NODE_MAX_SESSIONS", "value": "1"},
            {"name": "SE_NODE_OVERRIDE_MAX_SESSIONS", "value": "false"},
            {"name": "SE_NODE_SESSION_TIMEOUT", "value": str(selenium_session_timeout(spec))},
            {"name": "SE_ENABLE_TRACING", "value": "false"},
        ],
        "resources": dict(spec.resources) or default_resources(settings),
        "readinessProbe": {
            "httpGet": {"path": settings.readiness_path, "port": "webdriver"},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        # A browser that exits has lost its session: the pod is not restarted, it fails.
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 15,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_group,
            "fsGroup": settings.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                                  "sizeLimit": settings.shm_size}}],
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": pod_labels(session),
            "annotations": {model.ANNOTATION_SESSION: meta["name"]},
            "ownerReferences": [owner_reference(session)],
        },
        "spec": pod_spec,
    }


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
def webdriver_url(pod: Mapping[str, Any], settings: OperatorSettings) -> str:
    """Where the pod's WebDriver endpoint is (``http://<podIP>:<port>``)."""
    ip = str((pod.get("status") or {}).get("podIP") or "")
    if not ip:
        raise ValueError("the pod has no IP yet")
    port = settings.webdriver_port
    if settings.trust_port_annotation:
        annotated = ((pod.get("metadata") or {}).get("annotations") or {}).get(
            model.ANNOTATION_WEBDRIVER_PORT)
        if annotated and str(annotated).isdigit() and 0 < int(annotated) < 65536:
            port = int(annotated)
    return f"http://{_host(ip)}:{port}"


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
