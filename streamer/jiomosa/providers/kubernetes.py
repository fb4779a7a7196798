"""``JIOMOSA_BACKEND=kubernetes``: every browser is a BrowserSession resource that the operator
(``jiomosa operator``) runs as a pod of its own.

* ``acquire`` creates a BrowserSession in ``JIOMOSA_NAMESPACE``, waits for it to be Ready and
  hands out its CDP endpoint, with the token an agent pod demands (read from the Secret named
  in ``status.endpoints.cdpTokenSecret``, which the session owns); the lease's ``release``
  deletes the resource (the operator quits the browser and deletes the pod).
* ``find(token)`` hands out a BrowserSession made by someone else (``kubectl apply``) to a
  client that holds its viewer token (``jiomosa.k8s.viewers``); a resource name is never
  enough, and a streamer's own BrowserSessions are reachable only through the streamer's
  session id. Releasing such a lease leaves the resource alone: the streamer deletes only the
  BrowserSessions it created.
* ``note_activity`` on a lease refreshes the resource's ``jiomosa.io/last-activity`` annotation,
  at most every ``ACTIVITY_INTERVAL`` seconds; the operator expires sessions from it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jiomosa.core.settings import Settings
from jiomosa.core.tasks import TaskSet
from jiomosa.core.types import BrowserEndpoint, BrowserStartError, Viewport
from jiomosa.k8s import model, viewers
from jiomosa.k8s.api import ApiError, KubeApi, secret_path, session_path
from jiomosa.providers.base import BrowserLease

log = logging.getLogger(__name__)

ACTIVITY_INTERVAL = 15.0  # seconds between activity reports of one session
POLL = 0.25  # seconds between looks at a starting BrowserSession
REAP_MARGIN = 60  # the operator reaps a streamer's session this long after the streamer would
SYNC_WAIT = 5.0  # seconds after start during which a token lookup waits for the viewer index
LISTED_PREFIX = "browsersession/"  # admin list entries of kubectl-made sessions: no session id
ENDED = frozenset({model.FAILED, model.EXPIRED, model.TERMINATING})


def _rfc3339(at: float) -> str:
    return model.fmt_time(datetime.fromtimestamp(at, UTC))


def _epoch(value: Any) -> float:
    moment = model.parse_time(value)
    return moment.timestamp() if moment is not None else 0.0


def session_manifest(settings: Settings, width: int, height: int, scale: float,
                     now: float) -> dict[str, Any]:
    """The BrowserSession a streamer asks for."""
    return {
        "apiVersion": model.API_VERSION,
        "kind": model.KIND,
        "metadata": {
            "generateName": "jiomosa-",
            "labels": {model.LABEL_CREATED_BY: model.CREATED_BY_STREAMER},
            "annotations": {model.ANNOTATION_ACTIVITY: _rfc3339(now)},
        },
        "spec": {
            "url": "about:blank",
            "viewport": {"width": width, "height": height, "deviceScaleFactor": scale,
                         "mobile": False},
            # The streamer reaps first; these catch the sessions of a streamer that died.
            "idleTimeoutSeconds": math.ceil(settings.idle_timeout) + REAP_MARGIN,
            "maxDurationSeconds": (math.ceil(settings.max_duration) + REAP_MARGIN
                                   if settings.max_duration else 0),
        },
    }


def endpoint_of(resource: dict[str, Any]) -> BrowserEndpoint:
    endpoints = (resource.get("status") or {}).get("endpoints") or {}
    return BrowserEndpoint(
        kind="kubernetes",
        cdp_url=str(endpoints.get("cdp", "")),
        webdriver_url=str(endpoints.get("webdriver", "")),
        webdriver_session_id=str(endpoints.get("webdriverSessionId", "")),
    )


def token_secret_of(resource: dict[str, Any]) -> str:
    """The Secret holding the CDP token of the resource's browser ('' for a Selenium pod,
    which has none). Only a name the API server generated for this session's token Secret is
    taken: status does not get to make the streamer read any other Secret."""
    endpoints = (resource.get("status") or {}).get("endpoints") or {}
    name = endpoints.get("cdpTokenSecret")
    if not name:
        return ""
    session = str((resource.get("metadata") or {}).get("name") or "")
    if not model.is_generated(session, "cdp", name):
        raise BrowserStartError("the browser's token Secret is not the session's")
    return str(name)


def token_of(secret: dict[str, Any], resource: dict[str, Any]) -> str:
    """The token in a session's token Secret, once the Secret is shown to be the session's
    own (its controlling owner is the BrowserSession)."""
    uid = (resource.get("metadata") or {}).get("uid")
    owners = (secret.get("metadata") or {}).get("ownerReferences") or []
    if not uid or not any(o.get("uid") == uid and o.get("controller") for o in owners):
        raise BrowserStartError("the browser's token Secret is not the session's")
    try:
        token = base64.b64decode((secret.get("data") or {})[model.TOKEN_SECRET_KEY]).decode()
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise BrowserStartError("the browser's token Secret holds no token") from None
    return token


def viewport_of(resource: dict[str, Any]) -> Viewport:
    spec = resource.get("spec") or {}
    vp = spec.get("viewport") or {}
    return Viewport(int(vp.get("width", 1280)), int(vp.get("height", 720)),
                    float(vp.get("deviceScaleFactor", 1.0)), bool(vp.get("mobile", False)),
                    str(spec.get("userAgent") or ""))


streamer_made = model.made_by_streamer


@dataclass
class KubeLease(BrowserLease):
    """A BrowserSession handed to one streamer session."""

    provider: KubernetesProvider | None = None
    name: str = ""
    owned: bool | None = None
    """True: this streamer created the BrowserSession (release deletes it); False: a
    kubectl-made one (release leaves it); None: adopted from another streamer's record (release
    asks the resource's label)."""
    _reported: float = 0.0
    _reporting: TaskSet = field(default_factory=lambda: TaskSet("activity-reports"))

    async def release(self) -> None:
        if self.provider is not None:
            await self.provider.release(self)

    @property
    def replaceable(self) -> bool:
        # A kubectl-made BrowserSession is its maker's: a new one of the streamer's would
        # be another browser under a viewer's token, so its crash ends the viewing.
        return self.owned is not False

    def note_activity(self, at: float) -> None:
        """The session saw user activity at ``at`` (Unix time): tell the operator, at most
        every ACTIVITY_INTERVAL seconds."""
        if self.provider is None or at - self._reported < ACTIVITY_INTERVAL:
            return
        self._reported = at
        self._reporting.spawn(self.provider.report_activity(self, at),
                              f"report-activity-{self.name}")


class KubernetesProvider:
    """BrowserProvider whose browsers are BrowserSessions in one namespace."""

    def __init__(self, settings: Settings, api: KubeApi | None = None) -> None:
        self._settings = settings
        self._namespace = settings.namespace
        self._api = api
        self._api_lock = asyncio.Lock()
        self._viewers = viewers.ViewerIndex(self.api, self._namespace)
        self._viewed: set[str] = set()  # kubectl-made BrowserSessions this streamer serves
        self._watching = TaskSet("viewer-index")
        self._started_at = 0.0

    # ------------------------------------------------------------------ provider interface
    warm = 0  # no pool: the cluster starts a pod per session

    async def start(self) -> None:
        await self.api()
        self._started_at = time.monotonic()
        self._watching.spawn(self._viewers.run(), "viewer-index")

    async def stop(self) -> None:
        await self._watching.close()
        if self._api is not None:
            await self._api.close()
            self._api = None

    def request_refill(self) -> None:
        pass

    async def api(self) -> KubeApi:
        async with self._api_lock:
            if self._api is None:
                self._api = await KubeApi.from_environment()
            return self._api

    async def acquire(self, width: int, height: int, scale: float = 1.0) -> BrowserLease:
        """Create a BrowserSession and wait until its browser is Ready."""
        s = self._settings
        body = session_manifest(s, width, height, scale, time.time())
        api = await self.api()
        try:
            created = await api.create(session_path(self._namespace), body)
        except ApiError as exc:
            log.warning("cannot create a BrowserSession: %s", exc)
            raise BrowserStartError("the cluster refused to start a browser") from None
        name = str(created["metadata"]["name"])
        lease = KubeLease(BrowserEndpoint("kubernetes", ""), provider=self, name=name,
                          owned=True)
        try:
            resource = await self._wait_ready(name, s.browser_start_timeout)
            lease.endpoint = await self._endpoint(resource)
        except BaseException:
            await asyncio.shield(self._delete(name))
            raise
        log.info("BrowserSession %s/%s is ready", self._namespace, name)
        return lease

    def lease_for(self, endpoint: BrowserEndpoint) -> BrowserLease:
        """A lease for a browser another streamer acquired (fleet failover)."""
        return KubeLease(endpoint, provider=self)

    async def find(self, token: str) -> tuple[BrowserLease, Viewport] | None:
        """The kubectl-made BrowserSession whose viewer token is ``token``, once Ready; None if
        there is none or it has ended. Costs no API call, right or wrong: the viewer index
        answers (an id of any other shape is not even looked up)."""
        if not viewers.is_token(token):
            return None
        # Right after start the index may not be current yet: wait for it, briefly (later a
        # broken watch answers at once, never by stale data).
        wait = self._started_at + SYNC_WAIT - time.monotonic()
        if wait > 0 and not self._viewers.synced.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._viewers.synced.wait(), wait)
        resource = self._viewers.lookup(token)
        if resource is None or _phase(resource) in ENDED:
            return None
        if _phase(resource) != model.READY or not endpoint_of(resource).cdp_url:
            resource = await self._viewers.wait_for(
                token, _settled, self._settings.browser_start_timeout)
            if resource is None or _phase(resource) != model.READY:
                return None
        name = str(resource["metadata"]["name"])
        try:
            endpoint = await self._endpoint(resource)
        except BrowserStartError as exc:
            log.warning("cannot view BrowserSession %s: %s", name, exc)
            return None
        self._viewed.add(name)
        lease = KubeLease(endpoint, provider=self, name=name, owned=False)
        return lease, viewport_of(resource)

    async def listed(self) -> list[dict[str, Any]]:
        """For the admin's session list: the Ready kubectl-made BrowserSessions no session of
        this streamer shows, from the viewer index (no API call). Their ``session_id`` is
        ``browsersession/<name>``: a name, not an id anyone can view them with."""
        out = []
        for item in self._viewers.items():
            meta, status = item["metadata"], item.get("status") or {}
            if _phase(item) != model.READY or meta["name"] in self._viewed:
                continue
            out.append({
                "session_id": LISTED_PREFIX + meta["name"],
                "created_at": _epoch(meta.get("creationTimestamp")),
                "last_activity": _epoch(status.get("lastActivity") or status.get("readyAt")),
                "current_page": status.get("url", ""),
                "status": "ready",
            })
        return out

    async def _endpoint(self, resource: dict[str, Any]) -> BrowserEndpoint:
        """The resource's endpoint with the token its browser demands (one ``get`` of the
        session's token Secret; none for Selenium pods)."""
        endpoint = endpoint_of(resource)
        secret_name = token_secret_of(resource)
        if not secret_name:
            return endpoint
        api = await self.api()
        try:
            secret = await api.get(secret_path(self._namespace, secret_name))
        except (ApiError, OSError) as exc:
            log.warning("cannot read the token Secret %s: %s", secret_name, exc)
            raise BrowserStartError("the browser's token cannot be read") from None
        if secret is None:
            raise BrowserStartError("the browser's token Secret is gone")
        return dataclasses.replace(endpoint, cdp_token=token_of(secret, resource))

    # ------------------------------------------------------------------ lease operations
    async def release(self, lease: KubeLease) -> None:
        """Delete the lease's BrowserSession if a streamer made it; a kubectl-made one stays
        (a viewer's ``close`` only detaches this streamer)."""
        if lease.owned is False:
            self._viewed.discard(lease.name)
            return
        if lease.owned:
            await self._delete(lease.name)
            return
        try:  # adopted from another streamer's record: the resource's label decides
            resource = await self._resource_of(lease)
            if resource is not None and streamer_made(resource):
                await self._delete(resource["metadata"]["name"])
        except (ApiError, OSError) as exc:
            log.warning("cannot delete BrowserSession %s: %s", lease.name, exc)

    async def report_activity(self, lease: KubeLease, at: float) -> None:
        try:
            if not lease.name:
                resource = await self._resource_of(lease)
                if resource is None:
                    return
                lease.name = resource["metadata"]["name"]
            api = await self.api()
            await api.merge_patch(session_path(self._namespace, lease.name),
                                  {"metadata": {"annotations": {
                                      model.ANNOTATION_ACTIVITY: _rfc3339(at)}}})
        except (ApiError, OSError) as exc:
            log.info("cannot report activity of BrowserSession %s: %s", lease.name, exc)

    async def _resource_of(self, lease: KubeLease) -> dict[str, Any] | None:
        api = await self.api()
        if lease.name:
            return await api.get(session_path(self._namespace, lease.name))
        # A lease from another streamer's record knows only the endpoint.
        data = await api.call("GET", session_path(self._namespace))
        for item in data.get("items", []):
            endpoints = (item.get("status") or {}).get("endpoints") or {}
            # A Selenium pod's browser by its WebDriver session, an agent pod's by its
            # DevTools URL (the pod's address: unique while it runs).
            if (lease.endpoint.webdriver_session_id
                    and endpoints.get("webdriverSessionId")
                    == lease.endpoint.webdriver_session_id) or (
                    not lease.endpoint.webdriver_session_id and lease.endpoint.cdp_url
                    and endpoints.get("cdp") == lease.endpoint.cdp_url):
                lease.name = item["metadata"]["name"]
                return dict(item)
        return None

    async def _wait_ready(self, name: str, timeout: float) -> dict[str, Any]:
        api = await self.api()
        deadline = time.monotonic() + timeout
        resource: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            resource = await api.get(session_path(self._namespace, name))
            if resource is None:
                raise BrowserStartError("the BrowserSession was deleted while starting")
            phase = _phase(resource)
            if phase == model.READY and endpoint_of(resource).cdp_url:
                return resource
            if phase in ENDED:
                message = (resource.get("status") or {}).get("message") or phase
                raise BrowserStartError(f"the browser did not start: {message}")
            await asyncio.sleep(POLL)
        phase = _phase(resource or {}) or "no status (is the operator running?)"
        raise BrowserStartError(f"the browser did not start in time ({phase})")

    async def _delete(self, name: str) -> None:
        try:
            api = await self.api()
            await api.delete(session_path(self._namespace, name))
        except (ApiError, OSError) as exc:
            log.warning("cannot delete BrowserSession %s: %s", name, exc)


def _phase(resource: dict[str, Any]) -> str:
    return str((resource.get("status") or {}).get("phase") or "")


def _settled(resource: dict[str, Any] | None) -> bool:
    """A starting BrowserSession is settled once Ready with endpoints, ended, or gone."""
    if resource is None or _phase(resource) in ENDED:
        return True
    return _phase(resource) == model.READY and bool(endpoint_of(resource).cdp_url)
