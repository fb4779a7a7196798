"""Viewer tokens: how a client views a BrowserSession made with kubectl.

A resource name is no capability (``kubectl get bs`` shows it to anyone who may read the
namespace, and the streamer's own names have ~24 random bits), so a client reaches a
kubectl-made BrowserSession only with its viewer token: ``jview_`` + 256 random bits, made by
the operator and kept in a Secret owned by the BrowserSession (``status.viewer.secretName``).
The operator publishes only the token's SHA-256 (``status.viewer.tokenHash``); the streamer
never reads a viewer Secret (it reads only the CDP token Secret of a session it attaches to,
``providers/kubernetes.py``).

The streamer finds a token's BrowserSession in an index fed by one watch of the kubectl-made
BrowserSessions of its namespace (``ViewerIndex``): a lookup, right or wrong, costs no API call.
No Kopf here: the streamer imports this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from jiomosa.k8s import model
from jiomosa.k8s.api import ApiError, KubeApi, session_path

log = logging.getLogger(__name__)

TOKEN_PREFIX: Final = "jview_"
TOKEN_RE: Final = re.compile(r"^jview_[A-Za-z0-9_-]{43}$")
"""The one shape a viewer token has; any other id is not looked up at all."""
HASH_PREFIX: Final = "sha256:"
SECRET_KEY: Final = "token"
"""The key of the token in the viewer Secret's data."""

# Only BrowserSessions made by someone else than a streamer can be viewed by token.
KUBECTL_MADE: Final = f"{model.LABEL_CREATED_BY}!={model.CREATED_BY_STREAMER}"

RETRY_MIN = 0.5  # seconds before re-listing after a failed list or watch, doubling
RETRY_MAX = 30.0
WATCH_SECONDS = 290  # the server ends each watch after this; the index re-watches at once


def new_token() -> str:
    """A fresh viewer token (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_token(value: object) -> bool:
    return isinstance(value, str) and TOKEN_RE.match(value) is not None


def token_hash(token: str) -> str:
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def recorded_hash(resource: Mapping[str, Any]) -> str:
    viewer = (resource.get("status") or {}).get("viewer") or {}
    return str(viewer.get("tokenHash") or "")


def _slim(resource: Mapping[str, Any]) -> dict[str, Any]:
    """What the streamer needs of a BrowserSession (no managed fields, no Kopf annotations)."""
    meta = resource.get("metadata") or {}
    return {"metadata": {"name": meta.get("name", ""),
                         "uid": meta.get("uid", ""),
                         "creationTimestamp": meta.get("creationTimestamp"),
                         "labels": dict(meta.get("labels") or {})},
            "spec": dict(resource.get("spec") or {}),
            "status": dict(resource.get("status") or {})}


class ViewerIndex:
    """kubectl-made BrowserSessions of one namespace by name and by viewer-token hash, kept
    current by a watch (list, then watch from its resourceVersion; re-list on 410 Gone or
    any failure, with backoff). It answers only while it is current: from the moment a
    watch is accepted until a list or watch fails (a deleted session, or a revoked RBAC
    rule, is never served from stale data)."""

    def __init__(self, api: Callable[[], Awaitable[KubeApi]], namespace: str) -> None:
        self._api = api
        self._namespace = namespace
        self._by_name: dict[str, dict[str, Any]] = {}
        self._by_hash: dict[str, set[str]] = {}
        self.synced = asyncio.Event()
        """Set while the index is current (its watch accepted); a lookup before the first
        time waits for it (briefly)."""
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------------ lookups
    def lookup(self, token: str) -> dict[str, Any] | None:
        """The BrowserSession whose viewer token is ``token``, or None. Two resources that
        record the same hash (one copied the other's status) are both refused."""
        if not is_token(token) or not self.synced.is_set():
            return None
        wanted = token_hash(token)
        names = self._by_hash.get(wanted) or set()
        if len(names) != 1:
            return None
        resource = self._by_name.get(next(iter(names)))
        if resource is None or not hmac.compare_digest(recorded_hash(resource), wanted):
            return None
        return resource

    def items(self) -> list[dict[str, Any]]:
        return list(self._by_name.values()) if self.synced.is_set() else []

    async def wait_for(self, token: str, ready: Callable[[dict[str, Any] | None], bool],
                       timeout: float) -> dict[str, Any] | None:
        """The token's resource once ``ready(resource)`` holds (None after ``timeout``)."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                resource = self.lookup(token)
                if ready(resource):
                    return resource
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    return None

    # ------------------------------------------------------------------ upkeep
    def _put(self, resource: Mapping[str, Any]) -> None:
        slim = _slim(resource)
        name = slim["metadata"]["name"]
        self._drop(name)
        if (slim["metadata"]["labels"].get(model.LABEL_CREATED_BY)
                == model.CREATED_BY_STREAMER):
            return  # relabelled: never viewable by token
        self._by_name[name] = slim
        digest = recorded_hash(slim)
        if digest:
            self._by_hash.setdefault(digest, set()).add(name)

    def _drop(self, name: str) -> None:
        old = self._by_name.pop(name, None)
        if old is None:
            return
        digest = recorded_hash(old)
        names = self._by_hash.get(digest)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_hash[digest]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def run(self) -> None:
        """Keep the index current until cancelled."""
        delay = RETRY_MIN
        while True:
            try:
                version = await self._relist()
                delay = RETRY_MIN
                while version:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except (ApiError, OSError, ValueError, TimeoutError) as exc:
                self.synced.clear()  # stale from now on: answer nothing until current again
                await self._notify()
                if isinstance(exc, ApiError) and exc.status in (401, 403):
                    delay = RETRY_MAX  # RBAC: only an administrator changes that
                log.warning("watch of viewable BrowserSessions failed; kubectl-made sessions "
                            "cannot be viewed until it works again (retry in %.1f s): %s",
                            delay, exc)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)

    async def _relist(self) -> str:
        api = await self._api()
        data = await api.call("GET", session_path(self._namespace),
                              params={"labelSelector": KUBECTL_MADE})
        self._by_name.clear()
        self._by_hash.clear()
        for item in data.get("items") or []:
            self._put(item)
        await self._notify()
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, version: str) -> str:
        """One watch from ``version``; the version to go on from ("" = re-list)."""
        api = await self._api()
        params = {"labelSelector": KUBECTL_MADE, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(WATCH_SECONDS)}
        async for event in api.watch(session_path(self._namespace), version, params,
                                     opened=self.synced.set):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:  # too old: start again from a list
                    return ""
                raise ApiError(int(obj.get("code") or 500), str(obj.get("message") or obj))
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind in ("ADDED", "MODIFIED"):
                self._put(obj)
            elif kind == "DELETED":
                self._drop(str((obj.get("metadata") or {}).get("name") or ""))
            else:
                continue  # BOOKMARK: only the version moves
            await self._notify()
        return version
