"""Pure builders: the spec the operator accepts and every manifest it writes, as functions of
plain data. No I/O here; tested by dict equality without a cluster
(tests/operator/test_operator_builders.py). What the operator concludes from a pod and writes
to status is in ``state.py``."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jiomosa.core.types import Viewport
from jiomosa.k8s import model, viewers
from jiomosa_operator import policy, tokens
from jiomosa_operator.settings import OperatorSettings

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

    def check_allowed(self, settings: OperatorSettings) -> None:
        """Raise ``policy.SpecNotAllowed`` when the pod knobs ask for more than the operator's
        settings allow (image, resources, nodeSelector, tolerations)."""
        policy.check(self.image, self.resources, self.node_selector, self.tolerations, settings)

    def poolable(self, settings: OperatorSettings) -> bool:
        """Whether a warm-pool pod (default image and resources, no node constraints, Chrome's
        own scale and user agent) can serve this session."""
        if not settings.pool_size or (self.image, self.image_pull_policy) != (
                settings.image, settings.image_pull_policy):
            return False
        if self.node_selector or self.tolerations or self.chrome_args():
            return False
        try:
            return policy.pod_resources(self.resources, settings) == default_resources(settings)
        except policy.SpecNotAllowed:
            return False

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
    return policy.pod_resources({}, settings)


def selenium_session_timeout(spec: SessionSpec) -> int:
    """Selenium ends a WebDriver session after this many seconds without WebDriver commands;
    ours are driven over CDP, so the timeout must outlast the whole session."""
    return spec.max_duration + 600 if spec.max_duration else SESSION_TIMEOUT_UNLIMITED


def build_pod(session: Mapping[str, Any], settings: OperatorSettings,
              token_secret: str = "") -> dict[str, Any]:
    """The one pod that runs a session's browser: an agent pod whose token comes from the
    session's Secret ``token_secret`` (kind ``agent``), or a Selenium pod."""
    meta = session["metadata"]
    spec = SessionSpec.parse(session.get("spec") or {}, settings)
    spec.check_allowed(settings)
    if settings.agent:
        if not token_secret:
            raise ValueError("an agent pod needs the session's token Secret")
        token_env = {"name": "JIOMOSA_BROWSER_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": token_secret, "key": model.TOKEN_SECRET_KEY}}}
        pod_spec = _agent_pod_spec(spec, settings, token_env)
    else:
        pod_spec = _selenium_pod_spec(spec, settings)
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


def _container_security(settings: OperatorSettings, read_only: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if read_only:
        out["readOnlyRootFilesystem"] = True
    return out


def _pod_spec(container: dict[str, Any], volumes: list[dict[str, Any]], spec: SessionSpec,
              settings: OperatorSettings) -> dict[str, Any]:
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
        "volumes": volumes,
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    return pod_spec


def _agent_pod_spec(spec: SessionSpec, settings: OperatorSettings,
                    *env: dict[str, Any]) -> dict[str, Any]:
    """``jiomosa browser`` on one port, read-only root, ``/tmp`` and ``/dev/shm`` as
    ``emptyDir``s. The pod enforces the URL policy itself (egress proxy and Fetch), so it gets
    the operator's allow list; its token comes in ``env``."""
    variables = list(env)
    if settings.allow_hosts:
        variables.append({"name": "JIOMOSA_ALLOW_HOSTS", "value": ",".join(settings.allow_hosts)})
    if spec.device_scale_factor != 1.0:
        variables.append({"name": "JIOMOSA_CHROME_ARGS",
                          "value": f"--force-device-scale-factor={spec.device_scale_factor:g}"})
    if spec.user_agent:
        variables.append({"name": "JIOMOSA_BROWSER_USER_AGENT", "value": spec.user_agent})
    container: dict[str, Any] = {
        "name": model.CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": ["browser", "--port", str(settings.agent_port)],
        "ports": [{"name": "cdp", "containerPort": settings.agent_port, "protocol": "TCP"}],
        "env": variables,
        "resources": policy.pod_resources(spec.resources, settings),
        "readinessProbe": {
            "httpGet": {"path": settings.readiness_path, "port": "cdp"},
            "periodSeconds": 1,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "securityContext": _container_security(settings, read_only=True),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
               {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size}}]
    return _pod_spec(container, volumes, spec, settings)


def _selenium_pod_spec(spec: SessionSpec, settings: OperatorSettings) -> dict[str, Any]:
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
        # Merged over the operator's defaults and bounded by its maxima: a spec can neither
        # drop the memory limit nor ask for more than the settings allow.
        "resources": policy.pod_resources(spec.resources, settings),
        "readinessProbe": {
            "httpGet": {"path": settings.readiness_path, "port": "webdriver"},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        # The root filesystem stays writable: Selenium's entry point writes under its home.
        "securityContext": _container_security(settings, read_only=False),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}]
    return _pod_spec(container, volumes, spec, settings)


# ----------------------------------------------------------------------------- warm pool
def pool_pod(namespace: str, name: str, settings: OperatorSettings) -> dict[str, Any]:
    """A warm-pool agent pod: the default spec, no session token (nothing is authorized until
    it is claimed), its own claim token, owned by nobody until a session claims it."""
    spec = SessionSpec(image=settings.image, image_pull_policy=settings.image_pull_policy)
    claim = {"name": "JIOMOSA_BROWSER_CLAIM_TOKEN",
             "value": tokens.claim_token(settings.token_key, namespace, name)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                model.LABEL_NAME: "jiomosa-browser",
                model.LABEL_MANAGED_BY: model.MANAGED_BY,
                model.LABEL_POOL: model.POOL_WARM,
            },
        },
        "spec": _agent_pod_spec(spec, settings, claim),
    }


def claim_patch(session: Mapping[str, Any], pod: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that gives a warm pod to ``session``. It carries the pod's
    resourceVersion, which the API server checks (409 if the pod changed since it was read):
    of two sessions claiming one pod, exactly one wins. The owner reference makes the pod go
    with the session; the label takes it out of the pool for good."""
    labels = {k: v for k, v in pod_labels(session).items() if k != model.LABEL_NAME}
    return {"metadata": {
        "resourceVersion": pod["metadata"]["resourceVersion"],
        "labels": {**labels, model.LABEL_POOL: model.POOL_CLAIMED},
        "annotations": {model.ANNOTATION_SESSION: session["metadata"]["name"]},
        "ownerReferences": [owner_reference(session)],
    }}


def is_pool_pod(pod: Mapping[str, Any]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return model.LABEL_POOL in labels


# ----------------------------------------------------------------------------- viewer token
def viewer_secret(session: Mapping[str, Any], token: str) -> dict[str, Any]:
    """The Secret that holds a kubectl-made session's viewer token (``jiomosa.k8s.viewers``),
    owned by the session so that it goes with it. A generated name: it never collides with a
    Secret someone else made, and an operator restart that makes a second one only leaves an
    unused, owned orphan (the status records the first)."""
    return _session_secret(session, "viewer", "jiomosa-viewer", viewers.SECRET_KEY, token)


def token_secret(session: Mapping[str, Any], token: str) -> dict[str, Any]:
    """The Secret that holds a session's CDP token (the agent pod's bearer token): the agent
    reads it from its environment (``secretKeyRef``), the streamers with ``get``. Owned by the
    session (its garbage collector removes it); the operator's finalizer deletes it too."""
    return _session_secret(session, "cdp", "jiomosa-cdp-token", model.TOKEN_SECRET_KEY, token)


def _session_secret(session: Mapping[str, Any], kind: str, app: str, key: str,
                    token: str) -> dict[str, Any]:
    meta = session["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "generateName": model.generated_prefix(meta["name"], kind),
            "namespace": meta["namespace"],
            "labels": {
                model.LABEL_NAME: app,
                model.LABEL_MANAGED_BY: model.MANAGED_BY,
                model.LABEL_SESSION_UID: str(meta["uid"]),
            },
            "annotations": {model.ANNOTATION_SESSION: meta["name"]},
            "ownerReferences": [owner_reference(session)],
        },
        "type": "Opaque",
        "immutable": True,
        "stringData": {key: token},
    }


def viewer_status(secret_name: str, token: str) -> dict[str, str]:
    """``status.viewer``: where the token is, and its hash (what the streamers compare)."""
    return {"secretName": secret_name, "tokenHash": viewers.token_hash(token)}
