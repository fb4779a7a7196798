"""Pure parts of the operator and of the streamer's Kubernetes backend: no cluster, no browser."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from op_harness import CRD, ROOT

from jiomosa.core.settings import Settings
from jiomosa.core.types import BrowserEndpoint, Viewport
from jiomosa.k8s import model
from jiomosa.k8s.model import parse_time
from jiomosa.providers.kubernetes import (
    KubeLease,
    endpoint_of,
    session_manifest,
    streamer_made,
    viewport_of,
)
from jiomosa_operator.builders import SessionSpec, SpecError, build_pod, pod_name
from jiomosa_operator.handlers import BrowserSessionOperator, current_pod
from jiomosa_operator.main import _tame_kopf
from jiomosa_operator.settings import OperatorSettings, SettingsError, env_var
from jiomosa_operator.state import (
    PodState,
    endpoints_status,
    expiry,
    last_activity,
    normalize_cdp_url,
    phase_status,
    pod_state,
    set_condition,
    stray_sessions,
    webdriver_url,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = OperatorSettings()


def session(name: str = "web", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession",
            "metadata": {"name": name, "namespace": "ns1", "uid": "uid-1", "generation": 1},
            "spec": spec}


# ----------------------------------------------------------------------------- the pod
def test_pod_manifest_with_defaults() -> None:
    assert build_pod(session(url="https://example.com/"), SETTINGS) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-browser",
            "namespace": "ns1",
            "labels": {
                "app.kubernetes.io/name": "jiomosa-browser",
                "app.kubernetes.io/managed-by": "jiomosa-operator",
                "jiomosa.io/session-uid": "uid-1",
                "jiomosa.io/session": "web",
            },
            "annotations": {"jiomosa.io/session": "web"},
            "ownerReferences": [{
                "apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession", "name": "web",
                "uid": "uid-1", "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 15,
            "securityContext": {
                "runAsNonRoot": True, "runAsUser": 1200, "runAsGroup": 1201, "fsGroup": 1201,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "browser",
                "image": "selenium/standalone-chrome:latest",
                "imagePullPolicy": "IfNotPresent",
                "ports": [
                    {"name": "webdriver", "containerPort": 4444, "protocol": "TCP"},
                    {"name": "novnc", "containerPort": 7900, "protocol": "TCP"},
                ],
                "env": [
                    {"name": "SE_NODE_MAX_SESSIONS", "value": "1"},
                    {"name": "SE_NODE_OVERRIDE_MAX_SESSIONS", "value": "false"},
                    {"name": "SE_NODE_SESSION_TIMEOUT", "value": "4200"},
                    {"name": "SE_ENABLE_TRACING", "value": "false"},
                ],
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"memory": "2Gi"}},
                "readinessProbe": {
                    "httpGet": {"path": "/readyz", "port": "webdriver"},
                    "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3,
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "capabilities": {"drop": ["ALL"]},
                    "runAsNonRoot": True,
                    "runAsUser": 1200,
                    "runAsGroup": 1201,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
        },
    }


def test_pod_manifest_takes_the_pod_knobs_of_the_spec() -> None:
    settings = dataclasses.replace(SETTINGS, vnc_port=0, service_account="browsers",
                                   shm_size="2Gi", cpu_limit="2")
    resources = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "3Gi"}}
    tolerations = [{"key": "browsers", "operator": "Exists", "effect": "NoSchedule"}]
    pod = build_pod(session(
        "kiosk", image="registry.example/chrome:126", imagePullPolicy="Always",
        resources=resources, nodeSelector={"pool": "browsers"}, tolerations=tolerations,
        maxDurationSeconds=0), settings)
    spec = pod["spec"]
    container = spec["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == (
        "registry.example/chrome:126", "Always")
    assert container["resources"] == resources
    assert container["ports"] == [{"name": "webdriver", "containerPort": 4444,
                                   "protocol": "TCP"}]
    assert {"name": "SE_NODE_SESSION_TIMEOUT", "value": str(7 * 24 * 3600)} in container["env"]
    assert spec["nodeSelector"] == {"pool": "browsers"}
    assert spec["tolerations"] == tolerations
    assert spec["serviceAccountName"] == "browsers"
    assert spec["volumes"][0]["emptyDir"]["sizeLimit"] == "2Gi"
    # Defaults when the spec has no resources take the operator's limits.
    plain = build_pod(session(), settings)["spec"]["containers"][0]["resources"]
    assert plain == {"requests": {"cpu": "500m", "memory": "1Gi"},
                     "limits": {"cpu": "2", "memory": "2Gi"}}


def test_pod_names_stay_dns_labels() -> None:
    assert pod_name("web") == "web-browser"
    long = "a" * 60
    name = pod_name(long)
    assert len(name) == 63 and name.endswith("-browser") and name != pod_name("a" * 61)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    # A name too long for a label value gets no session label (the uid label is there).
    labels = build_pod(session("x" * 70), SETTINGS)["metadata"]["labels"]
    assert "jiomosa.io/session" not in labels and labels["jiomosa.io/session-uid"] == "uid-1"


# ----------------------------------------------------------------------------- the spec
def test_session_spec_defaults_and_browser_flags() -> None:
    spec = SessionSpec.parse({}, SETTINGS)
    assert (spec.url, spec.width, spec.height, spec.idle_timeout, spec.max_duration) == (
        "about:blank", 1280, 720, 300, 3600)
    assert spec.image == SETTINGS.image and spec.chrome_args() == ()
    spec = SessionSpec.parse({"viewport": {"width": 360, "height": 640, "deviceScaleFactor": 2,
                                           "mobile": True},
                              "userAgent": "KaiOS/3.0"}, SETTINGS)
    assert spec.viewport == Viewport(360, 640, 2.0, True, "KaiOS/3.0")
    assert spec.chrome_args() == ("--force-device-scale-factor=2", "--user-agent=KaiOS/3.0")


@pytest.mark.parametrize("spec,fragment", [
    ({"url": "file:///etc/passwd"}, "url"),
    ({"viewport": {"width": 50}}, "viewport"),
    ({"viewport": {"width": 3840, "height": 2160, "deviceScaleFactor": 2}}, "larger"),
    ({"viewport": {"width": "wide"}}, "unreadable"),
    ({"viewport": {"width": 300.5}}, "unreadable"),
    ({"userAgent": "a\nb"}, "userAgent"),
    ({"idleTimeoutSeconds": -1}, "timeouts"),
    ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
])
def test_session_spec_rejects_what_the_schema_should_have(spec: dict[str, Any],
                                                          fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        SessionSpec.parse(spec, SETTINGS)


# ----------------------------------------------------------------------------- pod state
def pod(phase: str | None = None, ip: str = "", conditions: dict[str, str] | None = None,
        containers: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"metadata": {"name": "web-browser"}, "status": dict(status)}
    if phase:
        out["status"]["phase"] = phase
    if ip:
        out["status"]["podIP"] = ip
    if conditions:
        out["status"]["conditions"] = [{"type": k, "status": v} for k, v in conditions.items()]
    if containers is not None:
        out["status"]["containerStatuses"] = containers
    return out


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"name": "browser", "state": {"waiting": {"reason": reason, "message": message}}}


def terminated(reason: str, code: int) -> dict[str, Any]:
    return {"name": "browser", "state": {"terminated": {"reason": reason, "exitCode": code}}}


@pytest.mark.parametrize("given,kind,reason", [
    (None, "missing", "PodMissing"),
    (pod(), "pending", "PodPending"),
    (pod("Pending", conditions={"PodScheduled": "False"}), "pending", "Unschedulable"),
    (pod("Pending", containers=[waiting("ContainerCreating")]), "pending", "ContainerCreating"),
    (pod("Pending", containers=[waiting("ErrImagePull", "not found")]), "failed",
     "ErrImagePull"),
    (pod("Pending", containers=[waiting("ImagePullBackOff")]), "failed", "ImagePullBackOff"),
    (pod("Pending", containers=[waiting("CreateContainerConfigError")]), "failed",
     "CreateContainerConfigError"),
    (pod("Running", "10.1.2.3", {"Ready": "False"}), "starting", "ContainersNotReady"),
    (pod("Running", "", {"Ready": "True"}), "starting", "ContainersNotReady"),
    (pod("Running", "10.1.2.3", {"Ready": "True"}), "ready", "PodReady"),
    (pod("Failed", containers=[terminated("OOMKilled", 137)]), "failed", "OOMKilled"),
    (pod("Running", "10.1.2.3", containers=[terminated("Error", 1)]), "failed", "Error"),
    (pod("Failed", reason="Evicted", message="The node was low on memory."), "failed",
     "Evicted"),
    (pod("Succeeded"), "failed", "BrowserExited"),
    (pod("Unknown"), "pending", "PodUnknown"),
    ({"metadata": {"deletionTimestamp": "2025-03-01T12:00:00Z"}, "status": {}}, "terminating",
     "PodDeleted"),
])
def test_pod_state(given: dict[str, Any] | None, kind: str, reason: str) -> None:
    state = pod_state(given)
    assert (state.kind, state.reason) == (kind, reason)
    assert state.message


def test_pod_state_messages_carry_the_cause() -> None:
    pulled = pod_state(pod("Pending", containers=[waiting("ErrImagePull", "no such host")]))
    assert pulled.message == "browser: no such host"
    oom = pod_state(pod("Failed", containers=[terminated("OOMKilled", 137)]))
    assert oom.message == "browser: exit code 137"
    assert pod_state(pod("Running", "10.1.2.3", {"Ready": "True"})) == PodState(
        "ready", "PodReady", "the browser pod is ready", "10.1.2.3")


# ----------------------------------------------------------------------------- endpoints
def test_webdriver_url_and_the_test_port_annotation() -> None:
    ready = pod("Running", "10.1.2.3", {"Ready": "True"})
    ready["metadata"]["annotations"] = {model.ANNOTATION_WEBDRIVER_PORT: "39999"}
    assert webdriver_url(ready, SETTINGS) == "http://10.1.2.3:4444"  # not trusted by default
    trusting = dataclasses.replace(SETTINGS, trust_port_annotation=True)
    assert webdriver_url(ready, trusting) == "http://10.1.2.3:39999"
    assert webdriver_url(pod("Running", "fd00::7"), SETTINGS) == "http://[fd00::7]:4444"
    with pytest.raises(ValueError):
        webdriver_url(pod("Running"), SETTINGS)


def test_cdp_urls_and_endpoints() -> None:
    se_cdp = "ws://selenium-host:4444/session/abc/se/cdp"
    assert normalize_cdp_url(se_cdp, "http://10.1.2.3:4444") == (
        "ws://10.1.2.3:4444/session/abc/se/cdp")
    devtools = "ws://127.0.0.1:9222/devtools/browser/xyz"
    assert normalize_cdp_url(devtools, "http://127.0.0.1:4444") == devtools
    assert endpoints_status("http://10.1.2.3:4444", "abc", se_cdp, "10.1.2.3", SETTINGS) == {
        "webdriver": "http://10.1.2.3:4444", "webdriverSessionId": "abc",
        "cdp": "ws://10.1.2.3:4444/session/abc/se/cdp", "vnc": "http://10.1.2.3:7900/"}
    no_vnc = dataclasses.replace(SETTINGS, vnc_port=0)
    assert "vnc" not in endpoints_status("http://h:4444", "abc", se_cdp, "h", no_vnc)


def test_stray_sessions_of_a_selenium_status() -> None:
    status = {"value": {"ready": False, "nodes": [{"slots": [
        {"session": {"sessionId": "s1", "capabilities": {}}}, {"session": None}]}]}}
    assert stray_sessions(status) == ["s1"]
    assert stray_sessions({"value": {"ready": True, "message": "ChromeDriver ready"}}) == []


# ----------------------------------------------------------------------------- status
def test_conditions_move_their_transition_time_only_on_change() -> None:
    first = set_condition([], "Ready", False, "PodCreated", "created", T0, 1)
    assert first == [{"type": "Ready", "status": "False", "reason": "PodCreated",
                      "message": "created", "lastTransitionTime": "2025-03-01T12:00:00Z",
                      "observedGeneration": 1}]
    later = T0 + timedelta(seconds=5)
    same = set_condition(first, "Ready", False, "ContainerCreating", "pulling", later)
    assert same[0]["lastTransitionTime"] == "2025-03-01T12:00:00Z"
    assert same[0]["reason"] == "ContainerCreating"
    flipped = set_condition(same, "Ready", True, "BrowserReady", "ok", later)
    assert flipped[0]["lastTransitionTime"] == "2025-03-01T12:00:05Z"


def test_phase_status() -> None:
    ready = phase_status({}, model.READY, "BrowserReady", "ok", T0, 2, pod_ready=True)
    assert ready["phase"] == "Ready" and ready["observedGeneration"] == 2
    assert {c["type"]: c["status"] for c in ready["conditions"]} == {
        "PodReady": "True", "Ready": "True"}
    assert "endedAt" not in ready
    failed = phase_status(ready, model.FAILED, "OOMKilled", "exit 137", T0, 2, pod_ready=False)
    assert failed["endedAt"] == "2025-03-01T12:00:00Z"
    assert {c["type"]: c["status"] for c in failed["conditions"]} == {
        "PodReady": "False", "Ready": "False"}
    # endedAt is kept, not moved, by a later patch.
    again = phase_status({**ready, **failed}, model.FAILED, "OOMKilled", "x", T0 + timedelta(1))
    assert "endedAt" not in again


# ----------------------------------------------------------------------------- expiry
def test_expiry() -> None:
    spec = SessionSpec(idle_timeout=60, max_duration=600)
    assert expiry(spec, T0, T0, T0 + timedelta(seconds=59)) is None
    assert expiry(spec, T0, T0, T0 + timedelta(seconds=60)) == (
        "IdleTimeout", "no activity for 60 s")
    assert expiry(spec, T0, T0 + timedelta(seconds=590), T0 + timedelta(seconds=600)) == (
        "MaxDurationReached", "the session reached its 600 s maximum")
    never = SessionSpec(idle_timeout=0, max_duration=0)
    assert expiry(never, T0, T0, T0 + timedelta(days=30)) is None


def test_last_activity_is_the_later_of_ready_and_the_annotation() -> None:
    status = {"readyAt": "2025-03-01T12:00:00Z"}
    assert last_activity({}, status) == T0
    annotations = {model.ANNOTATION_ACTIVITY: "2025-03-01T12:00:30Z"}
    assert last_activity(annotations, status) == T0 + timedelta(seconds=30)
    old = {model.ANNOTATION_ACTIVITY: "2025-03-01T11:00:00Z"}
    assert last_activity(old, status) == T0
    assert last_activity({model.ANNOTATION_ACTIVITY: "garbage"}, {}) is None
    assert parse_time("1740830400") == T0  # Unix seconds are read too
    assert parse_time(1740830400.0) == T0


# ----------------------------------------------------------------------------- handlers' glue
def test_pod_index_and_lookup() -> None:
    body = {"metadata": {"name": "web-browser", "labels": {model.LABEL_SESSION_UID: "u1"}},
            "status": {"phase": "Running"}}
    indexed = BrowserSessionOperator.index_pod(body, body["metadata"]["labels"])  # type: ignore[arg-type]
    assert indexed == {"u1": {"metadata": body["metadata"], "status": {"phase": "Running"}}}
    assert BrowserSessionOperator.index_pod(body, {}) is None  # type: ignore[arg-type]
    dying = {"metadata": {"name": "a", "deletionTimestamp": "x"}}
    live = {"metadata": {"name": "b"}}
    assert current_pod({"u1": [dying, live]}, "u1") == live
    assert current_pod({}, "u1") is None


def test_kopf_log_lines_are_tamed() -> None:
    record = logging.LogRecord("kopf.objects", logging.ERROR, "", 0,
                               "Handler 'start' failed temporarily: waiting", None, None)
    record.settings = object()
    assert _tame_kopf(record) is True
    assert record.levelno == logging.INFO and not hasattr(record, "settings")
    beat = logging.LogRecord("kopf.objects", logging.INFO, "", 0, "Timer 'watch' succeeded.",
                             None, None)
    assert _tame_kopf(beat) is logging.getLogger().isEnabledFor(logging.DEBUG)


# ----------------------------------------------------------------------------- settings
def test_operator_settings_from_env() -> None:
    settings = OperatorSettings.from_env({
        "JIOMOSA_OPERATOR_NAMESPACES": "a, b",
        "JIOMOSA_OPERATOR_CHECK_INTERVAL": "2.5",
        "JIOMOSA_OPERATOR_TRUST_PORT_ANNOTATION": "yes",
        "JIOMOSA_OPERATOR_LIVENESS_PORT": "0",
    })
    assert settings.namespaces == ("a", "b") and settings.check_interval == 2.5
    assert settings.trust_port_annotation is True and settings.liveness_endpoint is None
    assert OperatorSettings().liveness_endpoint == "http://0.0.0.0:8080/healthz"
    for env, fragment in [({"JIOMOSA_OPERATOR_POLL_INTERVAL": "fast"}, "POLL_INTERVAL"),
                          ({"JIOMOSA_OPERATOR_CHECK_INTERVAL": "0"}, "CHECK_INTERVAL"),
                          ({"JIOMOSA_OPERATOR_TRUST_PORT_ANNOTATION": "maybe"}, "TRUST"),
                          ({"JIOMOSA_OPERATOR_IMAGE_PULL_POLICY": "x"}, "PULL_POLICY")]:
        with pytest.raises(SettingsError, match=fragment):
            OperatorSettings.from_env(env)


def test_every_setting_is_documented() -> None:
    docs = (ROOT / "docs" / "operator.md").read_text()
    source = (ROOT / "operator" / "jiomosa_operator" / "settings.py").read_text()
    for f in dataclasses.fields(OperatorSettings):
        assert f"``{env_var(f.name)}``" in source, f.name  # its docstring names it
        assert f"`{env_var(f.name)}`" in docs, f.name


# ----------------------------------------------------------------------------- the CRD
def crd_version() -> dict[str, Any]:
    crd = yaml.safe_load(Path(CRD).read_text())
    assert crd["spec"]["group"] == model.GROUP
    assert crd["spec"]["names"]["kind"] == model.KIND
    assert crd["spec"]["names"]["plural"] == model.PLURAL
    assert crd["spec"]["names"]["shortNames"] == ["bs"]
    [version] = crd["spec"]["versions"]
    assert version["name"] == model.VERSION
    return dict(version)


def test_crd_is_structural_with_the_operator_defaults() -> None:
    version = crd_version()
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]

    def walk(node: Any, path: str = "") -> None:
        if isinstance(node, dict):
            assert "x-kubernetes-preserve-unknown-fields" not in node, path
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    walk(schema)
    spec = schema["properties"]["spec"]["properties"]
    defaults = SessionSpec()
    assert spec["url"]["default"] == defaults.url
    assert spec["idleTimeoutSeconds"]["default"] == defaults.idle_timeout
    assert spec["maxDurationSeconds"]["default"] == defaults.max_duration
    viewport = spec["viewport"]["properties"]
    assert (viewport["width"]["default"], viewport["height"]["default"]) == (
        defaults.width, defaults.height)
    assert spec["viewport"]["default"] == {"width": 1280, "height": 720,
                                           "deviceScaleFactor": 1.0, "mobile": False}
    phases = schema["properties"]["status"]["properties"]["phase"]["enum"]
    assert phases == [model.PENDING, model.STARTING, model.READY, model.FAILED, model.EXPIRED,
                      model.TERMINATING]
    columns = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns[:4] == [("Phase", ".status.phase"), ("URL", ".spec.url"),
                           ("Pod", ".status.podName"), ("Age", ".metadata.creationTimestamp")]


# ----------------------------------------------------------------------------- streamer side
def test_streamer_reads_browser_sessions() -> None:
    resource = {
        "metadata": {"name": "lobby", "labels": {}},
        "spec": {"viewport": {"width": 480, "height": 360, "deviceScaleFactor": 1.5,
                              "mobile": True}, "userAgent": "UA"},
        "status": {"phase": "Ready", "endpoints": {
            "webdriver": "http://10.1.2.3:4444", "webdriverSessionId": "s1",
            "cdp": "ws://10.1.2.3:4444/session/s1/se/cdp"}},
    }
    assert endpoint_of(resource) == BrowserEndpoint(
        "kubernetes", "ws://10.1.2.3:4444/session/s1/se/cdp", "http://10.1.2.3:4444", "s1")
    assert viewport_of(resource) == Viewport(480, 360, 1.5, True, "UA")
    assert not streamer_made(resource)
    resource["metadata"]["labels"] = {model.LABEL_CREATED_BY: model.CREATED_BY_STREAMER}
    assert streamer_made(resource)


def test_the_browser_session_a_streamer_asks_for() -> None:
    settings = Settings(idle_timeout=300.0, max_duration=3600.0)
    assert session_manifest(settings, 640, 480, 1.5, 1740830400.0) == {
        "apiVersion": "jiomosa.io/v1alpha1",
        "kind": "BrowserSession",
        "metadata": {
            "generateName": "jiomosa-",
            "labels": {"app.kubernetes.io/created-by": "jiomosa-streamer"},
            "annotations": {"jiomosa.io/last-activity": "2025-03-01T12:00:00Z"},
        },
        "spec": {
            "url": "about:blank",
            "viewport": {"width": 640, "height": 480, "deviceScaleFactor": 1.5,
                         "mobile": False},
            "idleTimeoutSeconds": 360,
            "maxDurationSeconds": 3660,
        },
    }
    unlimited = session_manifest(Settings(max_duration=0.0), 640, 480, 1.0, 0.0)
    assert unlimited["spec"]["maxDurationSeconds"] == 0


async def test_activity_reports_are_rate_limited() -> None:
    reports: list[float] = []

    class Provider:
        async def report_activity(self, lease: KubeLease, at: float) -> None:
            reports.append(at)

    lease = KubeLease(BrowserEndpoint("kubernetes", ""), provider=Provider(),  # type: ignore[arg-type]
                      name="x")
    for at in (1000.0, 1005.0, 1014.9, 1015.0, 1016.0, 1031.0):
        lease.note_activity(at)
    await asyncio.sleep(0)
    assert reports == [1000.0, 1015.0, 1031.0]
