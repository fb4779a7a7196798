"""``JIOMOSA_BACKEND=kubernetes``: every browser is a BrowserSession resource that the operator
(``jiomosa operator``) runs as a pod of its own.

* ``acquire`` creates a BrowserSession in ``JIOMOSA_NAMESPACE``, waits for it to be Ready and
  hands out its CDP endpoint; the lease's ``release`` deletes the resource (the operator quits
  the browser and deletes the pod).
* ``find(name)`` hands out a BrowserSession made by someone else (``kubectl apply``), so that a
  client can subscribe to it by its name. Releasing such a lease leaves the resource alone: the
  streamer deletes only the BrowserSessions a streamer created.
* ``note_activity`` on a lease refreshes the resource's ``jiomosa.io/last-activity`` annotation,
  at most every ``ACTIVITY_INTERVAL`` seconds; the operator expires sessions from it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jiomosa.core.settings import Settings
from jiomosa.core.tasks import TaskSet
from jiomosa.core.types import BrowserEndpoint, BrowserStartError, Viewport
from jiomosa.k8s import model
from jiomosa.k8s.api import ApiError, KubeApi, session_path
from jiomosa.providers.base import BrowserLease

log = logging.getLogger(__name__)

ACTIVITY_INTERVAL = 15.0  # seconds between activity reports of one session
ABSENT_TTL = 5.0  # seconds a name found missing is not asked about again (polling clients)
POLL = 0.25  # seconds between looks at a starting BrowserSession
REAP_MARGIN = 60  # the operator reaps a streamer's session this long after the streamer would
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
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


def viewport_of(resource: dict[str, Any]) -> Viewport:
    spec = resource.get("spec") or {}
    vp = spec.get("viewport") or {}
    return Viewport(int(vp.get("width", 1280)), int(vp.get("height", 720)),
                    float(vp.get("deviceScaleFactor", 1.0)), bool(vp.get("mobile", False)),
                    str(spec.get("userAgent") or ""))


def streamer_made(resource: dict[str, Any]) -> bool:
    labels = (resource.get("metadata") or {}).get("labels") or {}
    return labels.get(model.LABEL_CREATED_BY) == model.CREATED_BY_STREAMER


@dataclass
class KubeLease(BrowserLease):
    """A BrowserSession handed to one streamer session."""

    provider: KubernetesProvider | None = None
    name: str = ""
    _reported: float = 0.0
    _reporting: TaskSet = field(default_factory=lambda: TaskSet("activity-reports"))

    async def release(self) -> None:
        if self.provider is not None:
            await self.provider.release(self)

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
        self._absent: dict[str, float] = {}

    # ------------------------------------------------------------------ provider interface
    warm = 0  # no pool: the cluster starts a pod per session

    async def start(self) -> None:
        await self.api()

    async def stop(self) -> None:
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
        lease = KubeLease(BrowserEndpoint("kubernetes", ""), provider=self, name=name)
        try:
            resource = await self._wait_ready(name, s.browser_start_timeout)
        except BaseException:
            await asyncio.shield(self._delete(name))
            raise
        lease.endpoint = endpoint_of(resource)
        log.info("BrowserSession %s/%s is ready", self._namespace, name)
        return lease

    def lease_for(self, endpoint: BrowserEndpoint) -> BrowserLease:
        """A lease for a browser another streamer acquired (fleet failover)."""
        return KubeLease(endpoint, provider=self)

    async def find(self, name: str) -> tuple[BrowserLease, Viewport] | None:
        """A BrowserSession known by ``name`` (made with kubectl, or by a streamer that is gone),
        once Ready; None if there is none or it has ended."""
        if not NAME_RE.match(name):
            return None
        now = time.monotonic()
        if self._absent.get(name, 0.0) > now:
            return None
        api = await self.api()
        resource = await api.get(session_path(self._namespace, name))
        if resource is None or _phase(resource) in ENDED:
            if len(self._absent) > 10000:
                self._absent = {k: v for k, v in self._absent.items() if v > now}
            self._absent[name] = now + ABSENT_TTL
            return None
        if _phase(resource) != model.READY:
            try:
                resource = await self._wait_ready(name, self._settings.browser_start_timeout)
            except BrowserStartError:
                return None
        return KubeLease(endpoint_of(resource), provider=self, name=name), viewport_of(resource)

    async def listed(self) -> list[dict[str, Any]]:
        """Summaries of the Ready BrowserSessions made with kubectl (subscribable by name)."""
        api = await self.api()
        data = await api.call("GET", session_path(self._namespace))
        out = []
        for item in data.get("items", []):
            if streamer_made(item) or _phase(item) != model.READY:
                continue
            meta, status = item["metadata"], item.get("status") or {}
            out.append({
                "session_id": meta["name"],
                "created_at": _epoch(meta.get("creationTimestamp")),
                "last_activity": _epoch(status.get("lastActivity") or status.get("readyAt")),
                "current_page": status.get("url", ""),
                "status": "ready",
            })
        return out

    # ------------------------------------------------------------------ lease operations
    async def release(self, lease: KubeLease) -> None:
        """Delete the lease's BrowserSession if a streamer made it."""
        try:
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
            if (lease.endpoint.webdriver_session_id
                    and endpoints.get("webdriverSessionId")
                    == lease.endpoint.webdriver_session_id):
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
