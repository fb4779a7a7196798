"""Pure parts of the operator and of the streamer's Kubernetes backend: no cluster, no browser."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from op_harness import CRD, ROOT

from jiomosa import __version__
from jiomosa.core.settings import Settings
from jiomosa.core.types import BrowserEndpoint, BrowserStartError, Viewport
from jiomosa.k8s import model, viewers
from jiomosa.k8s.model import parse_time
from jiomosa.providers.kubernetes import (
    KubeLease,
    endpoint_of,
    session_manifest,
    streamer_made,
    token_of,
    token_secret_of,
    viewport_of,
)
from jiomosa_operator import tokens
from jiomosa_operator.builders import (
    SessionSpec,
    SpecError,
    build_pod,
    claim_patch,
    pod_name,
    pool_pod,
    token_secret,
    viewer_secret,
    viewer_status,
)
from jiomosa_operator.handlers import BrowserSessionOperator, current_pod
from jiomosa_operator.main import _tame_kopf
from jiomosa_operator.policy import SpecNotAllowed, pod_resources
from jiomosa_operator.settings import OperatorSettings, SettingsError, env_var
from jiomosa_operator.state import (
    PodState,
    PoolPlan,
    agent_endpoints,
    agent_url,
    endpoints_status,
    expiry,
    last_activity,
    normalize_cdp_url,
    phase_status,
    plan_pool,
    pod_state,
    set_condition,
    stray_sessions,
    webdriver_url,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
KEY = "k" * 32
SETTINGS = OperatorSettings(token_key=KEY)  # agent pods, the default
SELENIUM = OperatorSettings(browser_kind="selenium")
ENV = {"JIOMOSA_OPERATOR_TOKEN_KEY": KEY}
SECRET = "web-cdp-x2b4z"


def session(name: str = "web", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession",
            "metadata": {"name": name, "namespace": "ns1", "uid": "uid-1", "generation": 1},
            "spec": spec}


# ----------------------------------------------------------------------------- the pod
AGENT_SECURITY = {
    "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"}, "readOnlyRootFilesystem": True,
}


def agent_spec(env: list[dict[str, Any]]) -> dict[str, Any]:
    """An agent pod's spec with the operator's defaults and ``env``."""
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 15,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": "browser",
            "image": f"jiomosa.local/jiomosa-browser:{__version__}",
            "imagePullPolicy": "IfNotPresent",
            "args": ["browser", "--port", "9300"],
            "ports": [{"name": "cdp", "containerPort": 9300, "protocol": "TCP"}],
            "env": env,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                          "limits": {"memory": "2Gi"}},
            "readinessProbe": {
                "httpGet": {"path": "/readyz", "port": "cdp"},
                "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 3,
            },
            "securityContext": AGENT_SECURITY,
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                             {"name": "tmp", "mountPath": "/tmp"}],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }


OWNED = {
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
}


def test_agent_pod_manifest_with_defaults() -> None:
    """The default browser pod: ``jiomosa browser`` on one port, read-only root, /tmp and
    /dev/shm as emptyDirs, its token from the session's Secret, no service-account token."""
    settings = dataclasses.replace(SETTINGS, allow_hosts=("10.0.0.7", "intranet.example"))
    assert build_pod(session(url="https://example.com/"), settings, SECRET) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-browser", "namespace": "ns1", **OWNED},
        "spec": agent_spec([
            {"name": "JIOMOSA_BROWSER_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "token"}}},
            # The pod enforces the URL policy: it gets the operator's allow list.
            {"name": "JIOMOSA_ALLOW_HOSTS", "value": "10.0.0.7,intranet.example"},
        ]),
    }
    with pytest.raises(ValueError, match="token Secret"):
        build_pod(session(), SETTINGS)  # an agent pod never starts without its token


def test_agent_pods_run_the_spec_browser_flags() -> None:
    container = build_pod(session(viewport={"width": 400, "height": 300,
                                            "deviceScaleFactor": 2},
                                  userAgent="Kiosk/1 (x)"), SETTINGS, SECRET)[
        "spec"]["containers"][0]
    assert container["env"][1:] == [
        {"name": "JIOMOSA_CHROME_ARGS", "value": "--force-device-scale-factor=2"},
        {"name": "JIOMOSA_BROWSER_USER_AGENT", "value": "Kiosk/1 (x)"}]


def test_selenium_pod_manifest_with_defaults() -> None:
    assert build_pod(session(url="https://example.com/"), SELENIUM) == {
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
    settings = dataclasses.replace(SELENIUM, vnc_port=0, service_account="browsers",
                                   shm_size="2Gi", cpu_limit="2",
                                   allowed_images=("registry.example/chrome:*",),
                                   allowed_node_selectors=("pool=browsers",),
                                   allowed_tolerations=("browsers",))
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
    # The spec's resources over the operator's defaults (its cpu limit stays).
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"},
                                      "limits": {"cpu": "2", "memory": "3Gi"}}
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


# ----------------------------------------------------------------------------- what authors may ask
@pytest.mark.parametrize("spec,fragment", [
    ({"image": "evil.example/chrome:1"}, "image evil.example/chrome:1 is not allowed"),
    ({"image": "registry.example/chromium:1"}, "not allowed"),  # the prefix ends in "chrome:"
    ({"tolerations": [{"operator": "Exists"}]}, "without a key"),
    ({"tolerations": [{"key": "gpu", "operator": "Exists"}]}, "taint gpu"),
    ({"nodeSelector": {"pool": "system"}}, "nodeSelector pool=system"),
    ({"nodeSelector": {"kubernetes.io/hostname": "master"}}, "kubernetes.io/hostname"),
    ({"resources": {"limits": {"memory": "64Gi"}}}, "limits.memory 64Gi is above"),
    ({"resources": {"requests": {"cpu": 8}}}, "requests.cpu 8 is above"),
    ({"resources": {"requests": {"nvidia.com/gpu": 1}}}, "only cpu and memory"),
    ({"resources": {"limits": {"memory": "0"}}}, "no usable quantity"),
    ({"resources": {"requests": {"memory": "-1Gi"}}}, "no usable quantity"),
    ({"resources": {"requests": {"memory": "3Gi"}, "limits": {"memory": "2Gi"}}},
     "requests.memory is above resources.limits.memory"),
])
def test_specs_asking_for_more_than_the_settings_allow_are_refused(spec: dict[str, Any],
                                                                   fragment: str) -> None:
    settings = dataclasses.replace(SETTINGS, allowed_images=("registry.example/chrome:*",),
                                   allowed_node_selectors=("pool=browsers", "zone"),
                                   allowed_tolerations=("browsers",))
    parsed = SessionSpec.parse(spec, settings)  # readable: the schema lets these through
    with pytest.raises(SpecNotAllowed, match=re.escape(fragment)):
        parsed.check_allowed(settings)
    with pytest.raises(SpecNotAllowed):
        build_pod(session(**spec), settings, SECRET)
    # What the same settings allow.
    SessionSpec.parse({"image": "registry.example/chrome:126", "nodeSelector": {
        "pool": "browsers", "zone": "any"}, "tolerations": [{"key": "browsers",
        "operator": "Exists"}]}, settings).check_allowed(settings)
    SessionSpec.parse({}, settings).check_allowed(settings)  # the default image


@pytest.mark.parametrize("resources,expected", [
    # requests: {} used to drop every default, the 2 Gi limit with it.
    ({"requests": {}}, {"requests": {"cpu": "500m", "memory": "1Gi"},
                        "limits": {"memory": "2Gi"}}),
    ({"requests": {}, "limits": {}}, {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"memory": "2Gi"}}),
    ({"requests": {"cpu": "1"}}, {"requests": {"cpu": "1", "memory": "1Gi"},
                                  "limits": {"memory": "2Gi"}}),
    # A request above the default limit raises the limit with it (never above the maximum).
    ({"requests": {"memory": "3Gi"}}, {"requests": {"cpu": "500m", "memory": "3Gi"},
                                       "limits": {"memory": "3Gi"}}),
    # A limit below the default request lowers the request.
    ({"limits": {"memory": "512Mi", "cpu": 1}}, {"requests": {"cpu": "500m", "memory": "512Mi"},
                                                 "limits": {"cpu": "1", "memory": "512Mi"}}),
])
def test_resources_merge_over_the_defaults_with_a_memory_limit_always(
        resources: dict[str, Any], expected: dict[str, Any]) -> None:
    container = build_pod(session(resources=resources), SETTINGS, SECRET)[
        "spec"]["containers"][0]
    assert container["resources"] == expected
    # Without a configured memory limit, the maximum is the limit.
    settings = dataclasses.replace(SETTINGS, memory_limit="")
    assert pod_resources({}, settings)["limits"] == {"memory": "4Gi"}


def test_resource_settings_are_checked() -> None:
    for env, fragment in [({"JIOMOSA_OPERATOR_MEMORY_LIMIT": "8Gi"}, "above"),
                          ({"JIOMOSA_OPERATOR_MAX_CPU": "lots"}, "MAX_CPU"),
                          ({"JIOMOSA_OPERATOR_CPU_REQUEST": "-1"}, "CPU_REQUEST"),
                          ({"JIOMOSA_OPERATOR_ALLOWED_NODE_SELECTORS": "=x"}, "no key")]:
        with pytest.raises(SettingsError, match=fragment):
            OperatorSettings.from_env({**ENV, **env})
    settings = OperatorSettings.from_env({
        **ENV, "JIOMOSA_OPERATOR_ALLOWED_IMAGES": "a/b:1, c/d:*",
        "JIOMOSA_OPERATOR_MAX_MEMORY": "16Gi", "JIOMOSA_OPERATOR_MEMORY_LIMIT": "8Gi"})
    assert settings.allowed_images == ("a/b:1", "c/d:*")


def test_viewer_secret_and_status() -> None:
    token = viewers.new_token()
    assert viewers.is_token(token) and len(token) == 49 and token != viewers.new_token()
    secret = viewer_secret(session("lobby"), token)
    assert secret == {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "generateName": "lobby-viewer-", "namespace": "ns1",
            "labels": {"app.kubernetes.io/name": "jiomosa-viewer",
                       "app.kubernetes.io/managed-by": "jiomosa-operator",
                       "jiomosa.io/session-uid": "uid-1"},
            "annotations": {"jiomosa.io/session": "lobby"},
            "ownerReferences": [{
                "apiVersion": "jiomosa.io/v1alpha1", "kind": "BrowserSession",
                "name": "lobby", "uid": "uid-1", "controller": True,
                "blockOwnerDeletion": True}],
        },
        "type": "Opaque", "immutable": True, "stringData": {"token": token},
    }
    status = viewer_status("lobby-viewer-x1y2z", token)
    assert status["secretName"] == "lobby-viewer-x1y2z"
    assert status["tokenHash"] == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    # Only that exact shape is ever looked up.
    for other in ("lobby", token[:-1], token + "x", "jview_" + "a" * 42 + "/",
                  token.replace("jview_", "jview-")):
        assert not viewers.is_token(other)


def test_viewer_index_finds_tokens_by_hash_only() -> None:
    index = viewers.ViewerIndex(None, "ns1")  # type: ignore[arg-type]
    token, other = viewers.new_token(), viewers.new_token()

    def bs(name: str, tok: str, **labels: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": labels},
                "status": {"phase": "Ready", "viewer": viewer_status(f"{name}-v", tok)}}
    index._put(bs("lobby", token))
    assert index.lookup(token) is None  # not current (no watch accepted yet): answers nothing
    index.synced.set()
    assert index.lookup(token)["metadata"]["name"] == "lobby"  # type: ignore[index]
    assert index.lookup(other) is None and index.lookup("lobby") is None
    # Another resource that copies the recorded hash makes the token ambiguous: refused.
    index._put(bs("copycat", token))
    assert index.lookup(token) is None
    index._drop("copycat")
    assert index.lookup(token) is not None
    # A streamer's own BrowserSession is never viewable by token.
    index._put(bs("lobby", token, **{"app.kubernetes.io/created-by": "jiomosa-streamer"}))
    assert index.lookup(token) is None and index.items() == []


def test_pod_names_stay_dns_labels() -> None:
    assert pod_name("web") == "web-browser"
    long = "a" * 60
    name = pod_name(long)
    assert len(name) == 63 and name.endswith("-browser") and name != pod_name("a" * 61)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    # A name too long for a label value gets no session label (the uid label is there).
    labels = build_pod(session("x" * 70), SETTINGS, SECRET)["metadata"]["labels"]
    assert "jiomosa.io/session" not in labels and labels["jiomosa.io/session-uid"] == "uid-1"


# ----------------------------------------------------------------------------- tokens
def test_tokens_are_derived_per_session_and_per_purpose() -> None:
    token = tokens.session_token(KEY, "uid-1")
    assert token == tokens.session_token(KEY, "uid-1")  # the operator derives it again
    assert re.fullmatch(r"jcdp_[A-Za-z0-9_-]{43}", token)  # 256 bits
    others = {tokens.session_token(KEY, "uid-2"), tokens.session_token("j" * 32, "uid-1"),
              tokens.claim_token(KEY, "ns1", "uid-1"), tokens.claim_token(KEY, "ns2", "p"),
              tokens.claim_token(KEY, "ns1", "p")}
    assert len(others) == 5 and token not in others
    with pytest.raises(ValueError):
        tokens.session_token("", "uid-1")


def test_token_secret_and_the_names_status_may_give() -> None:
    secret = token_secret(session(), "jcdp_x")
    assert secret == {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "generateName": "web-cdp-", "namespace": "ns1",
            "labels": {"app.kubernetes.io/name": "jiomosa-cdp-token",
                       "app.kubernetes.io/managed-by": "jiomosa-operator",
                       "jiomosa.io/session-uid": "uid-1"},
            "annotations": {"jiomosa.io/session": "web"},
            "ownerReferences": OWNED["ownerReferences"],
        },
        "type": "Opaque", "immutable": True, "stringData": {"token": "jcdp_x"},
    }
    # Only names the API server generates for that session's Secret are read or deleted.
    assert model.is_generated("web", "cdp", "web-cdp-x2b4z")
    for name in ("other-cdp-x2b4z", "web-cdp-", "web-cdp-x2b4zz", "web-cdp-X2B4Z",
                 "web-viewer-x2b4z", "kube-root-ca.crt", None, 7):
        assert not model.is_generated("web", "cdp", name), name


def test_the_streamer_reads_only_the_sessions_own_token_secret() -> None:
    resource = {"metadata": {"name": "web", "uid": "uid-1"}, "status": {"endpoints": {
        "cdp": "ws://10.1.2.3:9300/devtools/browser", "cdpTokenSecret": SECRET}}}
    assert token_secret_of(resource) == SECRET
    assert token_secret_of({"metadata": {"name": "web"}, "status": {"endpoints": {
        "cdp": "ws://10.1.2.3:4444/session/s/se/cdp"}}}) == ""  # Selenium: no token
    forged = {**resource, "status": {"endpoints": {"cdpTokenSecret": "operator-key"}}}
    with pytest.raises(BrowserStartError):
        token_secret_of(forged)
    stored = {"metadata": {"ownerReferences": OWNED["ownerReferences"]},
              "data": {"token": "amNkcF94"}}
    assert token_of(stored, resource) == "jcdp_x"
    foreign = {**stored, "metadata": {"ownerReferences": [
        {**OWNED["ownerReferences"][0], "uid": "uid-2"}]}}
    for bad in (foreign, {"metadata": {}, "data": {"token": "amNkcF94"}},
                {"metadata": stored["metadata"], "data": {}}):
        with pytest.raises(BrowserStartError):
            token_of(bad, resource)


# ----------------------------------------------------------------------------- warm pool
def test_pool_pod_and_its_claim() -> None:
    pod = pool_pod("ns1", "jiomosa-pool-abc", SETTINGS)
    assert pod == {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "jiomosa-pool-abc", "namespace": "ns1", "labels": {
            "app.kubernetes.io/name": "jiomosa-browser",
            "app.kubernetes.io/managed-by": "jiomosa-operator",
            "jiomosa.io/pool": "warm"}},
        # No session token: the agent lets nobody in until it is claimed.
        "spec": agent_spec([{"name": "JIOMOSA_BROWSER_CLAIM_TOKEN",
                             "value": tokens.claim_token(KEY, "ns1", "jiomosa-pool-abc")}]),
    }
    pod["metadata"]["resourceVersion"] = "42"
    assert claim_patch(session(), pod) == {"metadata": {
        "resourceVersion": "42",  # the precondition: of two claims, one wins
        "labels": {"app.kubernetes.io/managed-by": "jiomosa-operator",
                   "jiomosa.io/session-uid": "uid-1", "jiomosa.io/session": "web",
                   "jiomosa.io/pool": "claimed"},
        "annotations": {"jiomosa.io/session": "web"},
        "ownerReferences": OWNED["ownerReferences"],
    }}


@pytest.mark.parametrize("spec,poolable", [
    ({}, True),
    ({"url": "https://example.com/", "viewport": {"width": 400, "height": 300,
                                                  "mobile": True}}, True),
    ({"resources": {"requests": {}}}, True),  # the same as the defaults
    ({"resources": {"requests": {"cpu": "1"}}}, False),
    ({"image": "registry.example/chrome:1"}, False),
    ({"imagePullPolicy": "Always"}, False),
    ({"viewport": {"width": 400, "height": 300, "deviceScaleFactor": 2}}, False),
    ({"userAgent": "Kiosk/1"}, False),
    ({"nodeSelector": {"pool": "browsers"}}, False),
    ({"tolerations": [{"key": "browsers", "operator": "Exists"}]}, False),
])
def test_which_sessions_a_pool_pod_can_serve(spec: dict[str, Any], poolable: bool) -> None:
    settings = dataclasses.replace(SETTINGS, allowed_images=("registry.example/chrome:*",),
                                   allowed_node_selectors=("pool",),
                                   allowed_tolerations=("browsers",))
    assert SessionSpec.parse(spec, settings).poolable(settings) is poolable
    assert not SessionSpec.parse(spec, dataclasses.replace(settings, warm_pool=0)).poolable(
        dataclasses.replace(settings, warm_pool=0))
    assert not SessionSpec.parse(spec, SELENIUM).poolable(SELENIUM)


def warm(name: str, created: str, ready: bool = True, phase: str = "Running",
         deleting: bool = False) -> dict[str, Any]:
    item = pod(phase, "10.0.0.9", {"Ready": "True" if ready else "False"})
    item["metadata"].update(name=name, creationTimestamp=created)
    if deleting:
        item["metadata"]["deletionTimestamp"] = created
    return item


def test_pool_plan() -> None:
    now = T0
    old, new = "2025-03-01T11:50:00Z", "2025-03-01T11:59:50Z"
    assert plan_pool([], 2, now, 120) == PoolPlan((), 2, ())
    # Ready ones are kept, missing ones made.
    plan = plan_pool([warm("a", old)], 2, now, 120)
    assert (plan.delete, plan.create, plan.ready) == ((), 1, ("a",))
    # Failed pods and pods that never became ready are replaced; starting ones wait.
    plan = plan_pool([warm("dead", new, False, phase="Failed"),
                      warm("stale", old, False), warm("young", new, False),
                      warm("gone", old, deleting=True)], 2, now, 120)
    assert (plan.delete, plan.create, plan.ready) == (("dead", "stale"), 1, ())
    # Scale-down: beyond the size, the not-ready first, then the youngest.
    plan = plan_pool([warm("b", new), warm("a", old), warm("c", new, False)], 1, now, 120)
    assert (sorted(plan.delete), plan.create, plan.ready) == (["b", "c"], 0, ("a",))
    plan = plan_pool([warm("a", old), warm("b", new)], 0, now, 120)
    assert (sorted(plan.delete), plan.create) == (["a", "b"], 0)


def test_agent_urls_and_endpoints() -> None:
    ready = pod("Running", "10.1.2.3", {"Ready": "True"})
    ready["metadata"]["annotations"] = {model.ANNOTATION_AGENT_PORT: "39999",
                                        model.ANNOTATION_WEBDRIVER_PORT: "40000"}
    assert agent_url(ready, SETTINGS) == "http://10.1.2.3:9300"  # not trusted by default
    trusting = dataclasses.replace(SETTINGS, trust_port_annotation=True)
    assert agent_url(ready, trusting) == "http://10.1.2.3:39999"
    assert agent_endpoints("http://[fd00::7]:9300", SECRET) == {
        "cdp": "ws://[fd00::7]:9300/devtools/browser", "cdpTokenSecret": SECRET}


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
        **ENV,
        "JIOMOSA_OPERATOR_NAMESPACES": "a, b",
        "JIOMOSA_OPERATOR_CHECK_INTERVAL": "2.5",
        "JIOMOSA_OPERATOR_TRUST_PORT_ANNOTATION": "yes",
        "JIOMOSA_OPERATOR_LIVENESS_PORT": "0",
    })
    assert settings.namespaces == ("a", "b") and settings.check_interval == 2.5
    assert settings.trust_port_annotation is True and settings.liveness_endpoint is None
    assert OperatorSettings().liveness_endpoint == "http://0.0.0.0:8080/healthz"
    # Agent pods by default, with the pool in the served namespaces; the key stays out of
    # the settings' repr (they are logged).
    assert (settings.browser_kind, settings.image, settings.run_as_user) == (
        "agent", f"jiomosa.local/jiomosa-browser:{__version__}", 10001)
    assert settings.pool_size == 2 and settings.served_pool_namespaces == ("a", "b")
    assert KEY not in repr(settings)
    selenium = OperatorSettings.from_env({"JIOMOSA_OPERATOR_BROWSER_KIND": "selenium",
                                          "JIOMOSA_OPERATOR_POOL_NAMESPACES": "c"})
    assert (selenium.image, selenium.run_as_user, selenium.run_as_group) == (
        "selenium/standalone-chrome:latest", 1200, 1201)
    assert selenium.pool_size == 0 and selenium.token_key == ""  # no tokens, no pool
    for env, fragment in [({"JIOMOSA_OPERATOR_POLL_INTERVAL": "fast"}, "POLL_INTERVAL"),
                          ({"JIOMOSA_OPERATOR_CHECK_INTERVAL": "0"}, "CHECK_INTERVAL"),
                          ({"JIOMOSA_OPERATOR_TRUST_PORT_ANNOTATION": "maybe"}, "TRUST"),
                          ({"JIOMOSA_OPERATOR_IMAGE_PULL_POLICY": "x"}, "PULL_POLICY"),
                          ({"JIOMOSA_OPERATOR_BROWSER_KIND": "chrome"}, "BROWSER_KIND"),
                          ({"JIOMOSA_OPERATOR_WARM_POOL": "-1"}, "WARM_POOL"),
                          ({"JIOMOSA_OPERATOR_RUN_AS_USER": "-5"}, "RUN_AS_USER"),
                          ({"JIOMOSA_OPERATOR_NAMESPACES": "a",
                            "JIOMOSA_OPERATOR_POOL_NAMESPACES": "b"}, "POOL_NAMESPACES"),
                          ({"JIOMOSA_OPERATOR_TOKEN_KEY": "short"}, "TOKEN_KEY")]:
        with pytest.raises(SettingsError, match=fragment):
            OperatorSettings.from_env({**ENV, **env})
    with pytest.raises(SettingsError, match="TOKEN_KEY"):
        OperatorSettings.from_env({})  # agent pods need the key


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
