"""Kopf handlers for BrowserSession: thin glue between the API, the pure judgements of
``builders`` and the browser operations of ``browser``.

Life of a session (docs/operator.md):

* ``start`` (create): check the spec against the operator's settings (``policy``: image,
  resources, nodeSelector, tolerations; else Failed ``SpecNotAllowed``), give a kubectl-made
  session its viewer token (a Secret, ``status.viewer``), give an agent pod's session its CDP
  token (a Secret, ``status.endpoints.cdpTokenSecret``), claim a warm pool pod (``pool``) or
  make a pod, follow it (Pending, Starting) with short retries, and when it is ready open the
  browser (Selenium: a WebDriver session; a claimed pool pod: its token handed over), navigate
  to ``spec.url`` and publish the endpoints (Ready). A pod that cannot start (image pull
  errors, crashes, start timeout) ends it as Failed.
* ``navigate`` (update of ``spec.url``): load the new URL in the running browser.
* ``watch`` (timer, Ready sessions): pod and browser health, idle and max-duration expiry.
* ``cleanup`` (delete, behind the finalizer): quit the browser, delete the session's Secrets
  and its pod, wait for the pod.

Status goes through Kopf's patch (applied after each handler run); only the records of the
Secrets it makes, of a claimed pool pod and of a freshly opened browser's endpoints are written
at once, so that an operator that dies right after making one finds it again instead of making
a second one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from jiomosa.browser.cdp import CDPError
from jiomosa.browser.page import NavigationError
from jiomosa.core.types import BrowserEndpoint, BrowserStartError
from jiomosa.core.urlpolicy import UrlPolicy, UrlRejected
from jiomosa.k8s import model, viewers
from jiomosa.k8s.api import ApiError, KubeApi, pod_path, secret_path, session_path
from jiomosa.k8s.model import fmt_time, parse_time, utcnow
from jiomosa_operator import browser, tokens
from jiomosa_operator.builders import (
    SessionSpec,
    SpecError,
    build_pod,
    is_pool_pod,
    pod_name,
    token_secret,
    viewer_secret,
    viewer_status,
)
from jiomosa_operator.policy import SpecNotAllowed
from jiomosa_operator.pool import WarmPool
from jiomosa_operator.settings import OperatorSettings
from jiomosa_operator.state import (
    PodState,
    agent_endpoints,
    agent_url,
    endpoints_status,
    expiry,
    is_transition,
    last_activity,
    phase_status,
    pod_state,
    set_condition,
    webdriver_url,
)

log = logging.getLogger(__name__)

RESOURCE = (model.GROUP, model.VERSION, model.PLURAL)
POD_INDEX = "browser_pods"
STORAGE_PREFIX = "operator.jiomosa.io"


def current_pod(index: Mapping[str, Any], uid: str,
                starting: bool = False) -> dict[str, Any] | None:
    """The session's pod as the pod index last saw it (a live one first). A ``starting``
    session looks past a claimed pool pod it dropped (being deleted): it takes another."""
    pods = [p for p in index.get(uid, ())
            if not (starting and is_pool_pod(p) and _deleting(p))]
    pods.sort(key=_deleting)
    return pods[0] if pods else None


def _deleting(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _ready(status: Mapping[str, Any], **_: Any) -> bool:
    return status.get("phase") == model.READY


class BrowserSessionOperator:
    """The handlers, bound to one set of settings and one API client."""

    def __init__(self, settings: OperatorSettings, kube: KubeApi | None = None) -> None:
        self.settings = settings
        self.policy = UrlPolicy.from_allow_list(settings.allow_hosts)
        self._kube = kube
        self.pool = WarmPool(settings, lambda: self.kube)

    # ------------------------------------------------------------------ registration
    def register(self, registry: kopf.OperatorRegistry) -> None:
        s = self.settings
        kopf.on.startup(registry=registry)(self.configure)
        kopf.on.cleanup(registry=registry)(self.shutdown)
        kopf.on.login(registry=registry)(kopf.login_via_client)
        kopf.on.probe(id="sessions", registry=registry)(self.probe)
        kopf.index("pods", labels={model.LABEL_MANAGED_BY: model.MANAGED_BY},
                   id=POD_INDEX, registry=registry)(self.index_pod)
        # backoff: how soon an unexpected error (API unreachable...) is retried.
        kopf.on.create(*RESOURCE, id="start", backoff=5, registry=registry)(self.start)
        kopf.on.update(*RESOURCE, field="spec.url", id="navigate", retries=5, backoff=5,
                       registry=registry)(self.navigate)
        kopf.timer(*RESOURCE, id="watch", interval=s.check_interval, when=_ready,
                   registry=registry)(self.watch)
        kopf.on.delete(*RESOURCE, id="cleanup", backoff=5, registry=registry)(self.cleanup)

    async def configure(self, settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = model.FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=STORAGE_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=STORAGE_PREFIX, key="last-handled-configuration")
        # Transitions post Events of their own; Kopf's log lines become Events only if bad.
        settings.posting.level = logging.WARNING
        settings.posting.reporting_component = model.MANAGED_BY
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        # Serving named namespaces needs no cluster-wide rights: no re-scanning of CRDs and
        # namespaces (the CRD must exist when the operator starts).
        settings.scanning.disabled = bool(self.settings.namespaces)
        if self._kube is None:
            self._kube = await KubeApi.from_environment()
        self.pool.start()

    async def shutdown(self, **_: Any) -> None:
        await self.pool.stop()
        if self._kube is not None:
            await self._kube.close()

    async def probe(self, **_: Any) -> str:
        return "ok"

    @property
    def kube(self) -> KubeApi:
        if self._kube is None:
            raise kopf.TemporaryError("the API client is not ready yet", delay=1)
        return self._kube

    @staticmethod
    def index_pod(body: kopf.Body, labels: Mapping[str, str],
                  **_: Any) -> dict[str, dict[str, Any]] | None:
        uid = labels.get(model.LABEL_SESSION_UID)
        if not uid:
            return None
        return {uid: {"metadata": dict(body.get("metadata") or {}),
                      "status": dict(body.get("status") or {})}}

    # ------------------------------------------------------------------ create → Ready
    async def start(self, body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
                    meta: kopf.Meta, patch: kopf.Patch, retry: int,
                    **kwargs: Any) -> None:
        current = dict(status)
        if current.get("phase") in model.FINISHED_PHASES:
            return
        now = utcnow()
        try:
            session = SessionSpec.parse(spec, self.settings)
        except SpecError as exc:
            await self._finish(body, current, patch, model.FAILED, "InvalidSpec", str(exc))
            raise kopf.PermanentError(str(exc)) from None
        try:
            session.check_allowed(self.settings)
        except SpecNotAllowed as exc:
            await self._finish(body, current, patch, model.FAILED, "SpecNotAllowed", str(exc))
            raise kopf.PermanentError(str(exc)) from None
        if not current.get("startedAt"):
            patch.status["startedAt"] = fmt_time(now)
        if not model.made_by_streamer(body) and not (current.get("viewer") or {}).get(
                "tokenHash"):
            await self._issue_viewer_token(body, current, patch)
        secret = ""
        if self.settings.agent:
            secret = await self._ensure_token_secret(body, current, patch)
        pod = current_pod(kwargs[POD_INDEX], meta["uid"], starting=True)
        if pod is None:
            pod = await self._recorded_pod(body, current)
        if pod is None and self.pool.serves(meta["namespace"]) and session.poolable(
                self.settings):
            pod = await self._claim(body, patch)
        if pod is None:
            pod, is_new = await self._ensure_pod(body, current, patch, secret)
            name = pod["metadata"]["name"]
            self._phase(body, current, patch, model.PENDING, "PodCreated",
                        f"created pod {name}" if is_new else f"found pod {name}",
                        pod_ready=False)
            raise kopf.TemporaryError("waiting for the pod", delay=self.settings.poll_interval)

        state = pod_state(pod)
        if state.kind == "failed":
            await self._finish(body, current, patch, model.FAILED, state.reason, state.message)
            return
        created = parse_time(meta.get("creationTimestamp"))
        if created is not None and (now - created).total_seconds() > self.settings.start_timeout:
            await self._finish(body, current, patch, model.FAILED, "StartTimeout",
                               f"not ready after {self.settings.start_timeout:g} s "
                               f"({state.reason}: {state.message})")
            return
        if not state.ready:
            phase = model.STARTING if state.kind == "starting" else model.PENDING
            self._phase(body, current, patch, phase, state.reason, state.message,
                        pod_ready=False)
            raise kopf.TemporaryError(state.message, delay=self.settings.poll_interval)

        opened: tuple[BrowserEndpoint, dict[str, str]] | None
        if self.settings.agent:
            opened = await self._open_agent(body, pod, secret, retry)
        else:
            opened = await self._open_browser(body, current, patch, pod, session, retry)
        if opened is None:
            return  # failed for good
        await self._become_ready(body, current, patch, pod, state, session, *opened)

    async def _issue_viewer_token(self, body: kopf.Body, current: Mapping[str, Any],
                                  patch: kopf.Patch) -> None:
        """A kubectl-made session's viewer token: kept in a Secret owned by the session, its
        hash recorded in ``status.viewer`` at once (so that a restart does not issue another).
        A streamer-made session gets none: it is reached through the streamer's session id."""
        token = viewers.new_token()
        meta = body["metadata"]
        name = await self._create_secret(body, current, patch, viewer_secret(body, token),
                                         "the viewer token", "ViewerTokenRefused")
        viewer = viewer_status(name, token)
        await self.kube.merge_patch(session_path(meta["namespace"], meta["name"], "status"),
                                    {"status": {"viewer": viewer}})
        patch.status["viewer"] = viewer
        self._event(body, "Normal", "ViewerToken", f"the viewer token is in Secret {name}")

    async def _create_secret(self, body: kopf.Body, current: Mapping[str, Any],
                             patch: kopf.Patch, manifest: dict[str, Any], what: str,
                             refused: str) -> str:
        """Create a Secret of the session; its generated name. A refusal that waiting will not
        mend (invalid, forbidden) fails the session with ``refused`` as the reason."""
        try:
            secret = await self.kube.create(secret_path(body["metadata"]["namespace"]),
                                            manifest)
        except ApiError as exc:
            message = f"cannot store {what}: {exc.message}"
            if exc.status in (400, 403, 422):
                await self._finish(body, current, patch, model.FAILED, refused, message)
                raise kopf.PermanentError(message) from None
            raise kopf.TemporaryError(message, delay=5) from None
        return str(secret["metadata"]["name"])

    def _token(self, body: kopf.Body) -> str:
        return tokens.session_token(self.settings.token_key, str(body["metadata"]["uid"]))

    async def _ensure_token_secret(self, body: kopf.Body, current: Mapping[str, Any],
                                   patch: kopf.Patch) -> str:
        """The Secret holding the session's CDP token (derived from the operator's key, so the
        operator never reads it back): made once, recorded in
        ``status.endpoints.cdpTokenSecret`` at once."""
        meta = body["metadata"]
        recorded = (current.get("endpoints") or {}).get("cdpTokenSecret")
        if model.is_generated(meta["name"], "cdp", recorded):
            return str(recorded)
        name = await self._create_secret(body, current, patch,
                                         token_secret(body, self._token(body)),
                                         "the browser's token", "TokenSecretRefused")
        await self.kube.merge_patch(session_path(meta["namespace"], meta["name"], "status"),
                                    {"status": {"endpoints": {"cdpTokenSecret": name}}})
        patch.status["endpoints"] = {"cdpTokenSecret": name}
        self._event(body, "Normal", "CDPToken", f"the browser's token is in Secret {name}")
        return name

    async def _recorded_pod(self, body: kopf.Body,
                            current: Mapping[str, Any]) -> dict[str, Any] | None:
        """The pod status.podName names, when the index has not seen it yet (a pool pod
        claimed by an earlier run) and it is the session's."""
        name = current.get("podName")
        if not name:
            return None
        pod = await self.kube.get(pod_path(body["metadata"]["namespace"], str(name)))
        owners = ((pod or {}).get("metadata") or {}).get("ownerReferences") or []
        if pod is None or not any(o.get("uid") == body["metadata"]["uid"] for o in owners):
            return None
        return None if is_pool_pod(pod) and _deleting(pod) else pod

    async def _claim(self, body: kopf.Body, patch: kopf.Patch) -> dict[str, Any] | None:
        """A ready warm pod made the session's (recorded at once), or None."""
        meta = body["metadata"]
        try:
            pod = await self.pool.claim(body)
        except (ApiError, OSError) as exc:
            log.warning("cannot claim a warm pod for %s: %s", meta["name"], exc)
            return None
        if pod is None:
            return None
        name = str(pod["metadata"]["name"])
        await self.kube.merge_patch(session_path(meta["namespace"], meta["name"], "status"),
                                    {"status": {"podName": name}})
        patch.status["podName"] = name
        self._event(body, "Normal", "PodClaimed", f"claimed warm pod {name}")
        return pod

    async def _open_agent(self, body: kopf.Body, pod: Mapping[str, Any], secret: str,
                          retry: int) -> tuple[BrowserEndpoint, dict[str, str]]:
        """An agent pod serves the session's token from its start (a Secret in its
        environment); a claimed pool pod is handed the token now (again after a restart or a
        lost answer: the pod then says it already serves it). A pool pod that refuses it, or
        cannot be reached ``browser_start_attempts`` times, is dropped (deleted), and the
        next run starts another."""
        url = agent_url(pod, self.settings)
        token = self._token(body)
        if is_pool_pod(pod):
            name = str(pod["metadata"]["name"])
            claim = tokens.claim_token(self.settings.token_key, body["metadata"]["namespace"],
                                       name)
            taken = await browser.agent_claim(url, claim, token)
            if taken is None and retry + 1 < self.settings.browser_start_attempts:
                # A busy node answers late: the pod stays the session's and is asked again.
                raise kopf.TemporaryError(f"warm pod {name} did not answer its claim",
                                          delay=max(1.0, self.settings.poll_interval))
            if not taken:
                why = "did not answer" if taken is None else "did not take the session's token"
                self._event(body, "Warning", "ClaimRefused", f"warm pod {name} {why}; dropped")
                await self._delete_pod(body, name)
                raise kopf.TemporaryError(f"warm pod {name} refused its claim",
                                          delay=self.settings.poll_interval)
        endpoints = agent_endpoints(url, secret)
        return BrowserEndpoint("kubernetes", endpoints["cdp"], cdp_token=token), endpoints

    async def _ensure_pod(self, body: kopf.Body, current: Mapping[str, Any],
                          patch: kopf.Patch, secret: str = "") -> tuple[dict[str, Any], bool]:
        """Create the session's pod (True), or find it if an earlier run already did (False).
        The pod's name is fixed by the session's: a restart never makes a second one."""
        manifest = build_pod(body, self.settings, secret)
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        patch.status["podName"] = name
        try:
            pod = await self.kube.create(pod_path(namespace), manifest)
        except ApiError as exc:
            if exc.status == 409:
                existing = await self.kube.get(pod_path(namespace, name))
                if existing is None:
                    raise kopf.TemporaryError("the pod name is being freed", delay=1) from None
                owners = (existing.get("metadata") or {}).get("ownerReferences") or []
                if any(o.get("uid") == body["metadata"]["uid"] for o in owners):
                    return existing, False
                message = f"pod {name} exists and does not belong to this session"
                await self._finish(body, current, patch, model.FAILED, "PodNameTaken", message)
                raise kopf.PermanentError(message) from None
            if exc.status in (400, 422):
                await self._finish(body, current, patch, model.FAILED, "PodRejected",
                                   exc.message)
                raise kopf.PermanentError(exc.message) from None
            raise kopf.TemporaryError(f"cannot create the pod: {exc}", delay=5) from None
        return pod, True

    async def _open_browser(self, body: kopf.Body, current: Mapping[str, Any],
                            patch: kopf.Patch, pod: Mapping[str, Any], session: SessionSpec,
                            retry: int) -> tuple[BrowserEndpoint, dict[str, str]] | None:
        """A Selenium pod's browser session: the recorded one if it still answers, else a new
        one."""
        webdriver = webdriver_url(pod, self.settings)
        recorded = dict(current.get("endpoints") or {})
        session_id = str(recorded.get("webdriverSessionId") or "")
        if session_id and recorded.get("webdriver") == webdriver and recorded.get("cdp"):
            if await browser.session_alive(webdriver, session_id):
                return (BrowserEndpoint("kubernetes", str(recorded["cdp"]), webdriver,
                                        session_id), recorded)
        strays = await browser.quit_strays(webdriver)
        if strays:
            log.info("quit %d orphaned browser session(s) on %s", len(strays), webdriver)
        try:
            endpoint = await browser.open_session(webdriver, session.viewport,
                                                  session.chrome_args(),
                                                  self.settings.browser_start_timeout)
        except BrowserStartError as exc:
            if retry + 1 >= self.settings.browser_start_attempts:
                await self._finish(body, current, patch, model.FAILED, "BrowserStartFailed",
                                   str(exc))
                return None
            raise kopf.TemporaryError(f"the browser did not start: {exc}",
                                      delay=max(2.0, self.settings.poll_interval)) from None
        endpoints = endpoints_status(webdriver, endpoint.webdriver_session_id, endpoint.cdp_url,
                                     str(pod.get("status", {}).get("podIP", "")), self.settings)
        # Recorded at once (not with Kopf's patch at the end): see the module docstring.
        meta = body["metadata"]
        await self.kube.merge_patch(session_path(meta["namespace"], meta["name"], "status"),
                                    {"status": {"endpoints": endpoints}})
        return BrowserEndpoint("kubernetes", endpoints["cdp"], webdriver,
                               endpoint.webdriver_session_id), endpoints

    async def _become_ready(self, body: kopf.Body, current: Mapping[str, Any],
                            patch: kopf.Patch, pod: Mapping[str, Any], state: PodState,
                            session: SessionSpec, endpoint: BrowserEndpoint,
                            endpoints: dict[str, str]) -> None:
        message = "the browser is ready"
        if session.url != "about:blank":
            page, problem = await self._load(body, endpoint, session, session.url)
            if page is not None:
                patch.status["url"] = page.get("url", session.url)
                patch.status["title"] = page.get("title", "")
                message = f"the browser shows {page.get('url', session.url)}"
            elif problem:
                message = f"the browser is ready; {problem}"
        patch.status["endpoints"] = endpoints
        patch.status["podIP"] = state.ip
        patch.status["podName"] = pod["metadata"]["name"]
        patch.status["readyAt"] = fmt_time(utcnow())  # idle time counts from here
        self._phase(body, current, patch, model.READY, "BrowserReady", message, pod_ready=True)

    async def _load(self, body: kopf.Body, endpoint: BrowserEndpoint, session: SessionSpec,
                    url: str) -> tuple[dict[str, Any] | None, str]:
        """Navigate; (page info, "") or (None, what went wrong, already posted as an Event)."""
        try:
            page = await browser.navigate(endpoint.cdp_url, url, self.policy, session.viewport,
                                          self.settings.navigation_timeout,
                                          token=endpoint.cdp_token)
        except UrlRejected as exc:
            problem = f"{url} is not allowed: {exc}"
            self._event(body, "Warning", "URLRejected", problem)
            return None, problem
        except NavigationError as exc:
            problem = f"loading {url} failed: {exc}"
            self._event(body, "Warning", "NavigationFailed", problem)
            return None, problem
        self._event(body, "Normal", "Navigated", f"loaded {page.get('url', url)}")
        return page, ""

    # ------------------------------------------------------------------ spec.url changed
    async def navigate(self, body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
                       patch: kopf.Patch, new: Any, **_: Any) -> None:
        current = dict(status)
        if current.get("phase") != model.READY or not new:
            return  # a starting session loads the latest spec.url when it becomes Ready
        endpoints = current.get("endpoints") or {}
        try:
            session = SessionSpec.parse(spec, self.settings)
        except SpecError as exc:
            raise kopf.PermanentError(str(exc)) from None
        endpoint = BrowserEndpoint("kubernetes", str(endpoints.get("cdp", "")),
                                   str(endpoints.get("webdriver", "")),
                                   str(endpoints.get("webdriverSessionId", "")),
                                   self._token(body) if self.settings.agent else "")
        page: dict[str, Any] | None
        if str(new) == "about:blank":
            page, problem = await self._blank(body, endpoint), ""
        else:
            try:
                page, problem = await self._load(body, endpoint, session, str(new))
            except (CDPError, OSError, TimeoutError) as exc:
                raise kopf.TemporaryError(f"the browser is unreachable: {exc}", delay=2) from None
        if page is not None:
            patch.status["url"] = page.get("url", new)
            patch.status["title"] = page.get("title", "")
            patch.status["message"] = f"the browser shows {page.get('url', new)}"
        else:
            patch.status["message"] = f"the browser is ready; {problem}"

    async def _blank(self, body: kopf.Body, endpoint: BrowserEndpoint) -> dict[str, Any]:
        """about:blank is no web page for the URL policy: WebDriver loads it (an agent pod's
        browser: plain CDP)."""
        try:
            if endpoint.webdriver_url:
                await browser.webdriver_get(endpoint.webdriver_url,
                                            endpoint.webdriver_session_id, "about:blank")
            else:
                await browser.blank(endpoint.cdp_url, endpoint.cdp_token)
        except OSError as exc:
            raise kopf.TemporaryError(f"the browser is unreachable: {exc}", delay=2) from None
        self._event(body, "Normal", "Navigated", "loaded about:blank")
        return {"url": "about:blank", "title": ""}

    # ------------------------------------------------------------------ Ready: health, expiry
    async def watch(self, body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
                    meta: kopf.Meta, patch: kopf.Patch, memo: kopf.Memo,
                    **kwargs: Any) -> None:
        current = dict(status)
        if current.get("phase") != model.READY:
            return
        now = utcnow()
        pod = current_pod(kwargs[POD_INDEX], meta["uid"])
        state = pod_state(pod)
        if state.kind in ("failed", "missing", "terminating"):
            await self._finish(body, current, patch, model.FAILED, state.reason, state.message)
            return
        if not await self._browser_healthy(current, memo, pod):
            await self._finish(body, current, patch, model.FAILED, "BrowserGone",
                               "the browser does not answer any more")
            return
        annotations = dict(meta.get("annotations") or {})
        reported = parse_time(annotations.get(model.ANNOTATION_ACTIVITY))
        if reported is not None and fmt_time(reported) != current.get("lastActivity"):
            patch.status["lastActivity"] = fmt_time(reported)
        try:
            session = SessionSpec.parse(spec, self.settings)
        except SpecError:
            session = SessionSpec()
        verdict = expiry(session, parse_time(meta.get("creationTimestamp")),
                         last_activity(annotations, current), now)
        if verdict is not None:
            await self._finish(body, current, patch, model.EXPIRED, *verdict)
            return
        # A running pod whose readiness probe fails: the condition says so; the browser
        # answers (checked above), so the session goes on.
        conditions = current.get("conditions") or []
        pod_ready = next((c.get("status") for c in conditions if c.get("type") == "PodReady"),
                         None)
        if pod_ready != ("True" if state.ready else "False"):
            patch.status["conditions"] = set_condition(
                conditions, "PodReady", state.ready, state.reason, state.message, now)

    async def _browser_healthy(self, current: Mapping[str, Any], memo: kopf.Memo,
                               pod: Mapping[str, Any] | None) -> bool:
        endpoints = current.get("endpoints") or {}
        alive: bool | None
        if endpoints.get("webdriver"):
            alive = await browser.session_alive(str(endpoints.get("webdriver", "")),
                                                str(endpoints.get("webdriverSessionId", "")))
        else:  # an agent pod: its browser answers CDP (the agent's /readyz)
            try:
                alive = await browser.agent_alive(agent_url(pod or {}, self.settings))
            except ValueError:  # no pod IP
                alive = None
        failures = 0 if alive else int(memo.get("health_failures", 0)) + 1
        memo["health_failures"] = failures
        return failures < self.settings.health_failures

    # ------------------------------------------------------------------ delete
    async def cleanup(self, body: kopf.Body, status: kopf.Status, meta: kopf.Meta,
                      patch: kopf.Patch, retry: int, runtime: Any, **kwargs: Any) -> None:
        current = dict(status)
        if retry == 0:
            if current.get("phase") != model.TERMINATING:
                self._phase(body, current, patch, model.TERMINATING, "Deleting",
                            "quitting the browser and deleting its pod")
            await self._quit_browser(current)
            # Owned by the session, so a garbage collector would remove them; deleted here
            # too, at once and where none runs.
            await self._delete_secret(body, "cdp",
                                      (current.get("endpoints") or {}).get("cdpTokenSecret"))
            await self._delete_secret(body, "viewer",
                                      (current.get("viewer") or {}).get("secretName"))
        pod = current_pod(kwargs[POD_INDEX], meta["uid"])
        name = (pod or {}).get("metadata", {}).get("name") or current.get("podName") or (
            pod_name(meta["name"]))
        if pod is None and retry == 0:
            await self._delete_pod(body, name)  # the index may lag
        elif pod is not None:
            if not pod["metadata"].get("deletionTimestamp"):
                await self._delete_pod(body, name)
            if runtime.total_seconds() < self.settings.delete_timeout:
                raise kopf.TemporaryError(f"waiting for pod {name} to go",
                                          delay=self.settings.poll_interval)
            self._event(body, "Warning", "PodLingers",
                        f"pod {name} is still there after {self.settings.delete_timeout:g} s")
        self._event(body, "Normal", "BrowserStopped", "the browser and its pod are gone")

    # ------------------------------------------------------------------ helpers
    async def _finish(self, body: kopf.Body, current: Mapping[str, Any], patch: kopf.Patch,
                      phase: str, reason: str, message: str) -> None:
        """End a session for good (Failed or Expired): quit its browser, delete its pod."""
        await self._quit_browser(current)
        name = current.get("podName") or pod_name(body["metadata"]["name"])
        try:
            await self._delete_pod(body, name)
            # The browser is gone: its token opens nothing any more.
            await self._delete_secret(body, "cdp",
                                      (current.get("endpoints") or {}).get("cdpTokenSecret"))
        except ApiError as exc:
            log.warning("cannot delete pod %s or its token: %s", name, exc)
        patch.status["endpoints"] = None
        self._phase(body, current, patch, phase, reason, message, pod_ready=False)

    async def _delete_pod(self, body: kopf.Body, name: str) -> None:
        """Delete the session's pod, and only if it is the session's: a pod that merely has
        the name (``PodNameTaken``) is left alone."""
        namespace = body["metadata"]["namespace"]
        pod = await self.kube.get(pod_path(namespace, name))
        if pod is None:
            return
        owners = (pod.get("metadata") or {}).get("ownerReferences") or []
        if not any(o.get("uid") == body["metadata"]["uid"] for o in owners):
            return
        try:
            await self.kube.delete(pod_path(namespace, name), {
                "apiVersion": "v1", "kind": "DeleteOptions",
                "preconditions": {"uid": pod["metadata"]["uid"]}})
        except ApiError as exc:
            if exc.status != 409:  # 409: replaced meanwhile, not ours any more
                raise

    async def _delete_secret(self, body: kopf.Body, kind: str, name: object) -> None:
        """Delete the session's Secret of ``kind`` named in its status, if the name is one the
        API server generated for it (status is not trusted to name any other Secret)."""
        meta = body["metadata"]
        if not model.is_generated(meta["name"], kind, name):
            return
        try:
            await self.kube.delete(secret_path(meta["namespace"], str(name)))
        except ApiError as exc:
            log.warning("cannot delete Secret %s: %s", name, exc)

    async def _quit_browser(self, current: Mapping[str, Any]) -> None:
        endpoints = current.get("endpoints") or {}
        if endpoints.get("webdriver") and endpoints.get("webdriverSessionId"):
            await browser.quit_session(str(endpoints["webdriver"]),
                                       str(endpoints["webdriverSessionId"]))

    def _phase(self, body: kopf.Body, current: Mapping[str, Any], patch: kopf.Patch,
               phase: str, reason: str, message: str, pod_ready: bool | None = None) -> None:
        """Put the session in ``phase`` (through ``patch``); an Event when that is news."""
        generation = body["metadata"].get("generation")
        update = phase_status(current, phase, reason, message, utcnow(), generation, pod_ready)
        for key, value in update.items():
            patch.status[key] = value
        if is_transition(current, phase, reason):
            kind = "Warning" if phase == model.FAILED else "Normal"
            self._event(body, kind, reason, f"{phase}: {message}")

    @staticmethod
    def _event(body: kopf.Body, type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message[:1000])
