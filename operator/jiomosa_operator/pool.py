"""The warm pool: ready agent pods waiting for BrowserSessions (docs/operator.md, "Warm pool").

Each pool namespace keeps ``JIOMOSA_OPERATOR_WARM_POOL`` agent pods labelled
``jiomosa.io/pool=warm``: no owner, no session token (the agent authorizes nothing), a claim
token of their own. One named background task (``refill``) looks at every pool namespace each
``JIOMOSA_OPERATOR_POOL_INTERVAL`` seconds, and at once after a claim: it deletes failed pods,
pods that never became ready (``JIOMOSA_OPERATOR_POOL_START_TIMEOUT``) and pods beyond the
size, and creates what is missing (``state.plan_pool``).

A session claims a ready warm pod with one merge patch carrying the pod's resourceVersion: the
API server applies it only to the version that was read, so of two sessions claiming one pod
exactly one wins (409 for the other, which tries the next pod, or starts a pod of its own).
The patch makes the session the pod's controlling owner and relabels it ``claimed``: it never
returns to the pool and goes with its session. A pool deletion carries the resourceVersion
too, so a pod claimed meanwhile is never deleted by the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from jiomosa.core.tasks import TaskSet
from jiomosa.k8s import model
from jiomosa.k8s.api import ApiError, KubeApi, pod_path
from jiomosa.k8s.model import utcnow
from jiomosa_operator.builders import claim_patch, pool_pod
from jiomosa_operator.settings import OperatorSettings
from jiomosa_operator.state import PoolPlan, plan_pool, pod_state

log = logging.getLogger(__name__)

WARM_SELECTOR = (f"{model.LABEL_MANAGED_BY}={model.MANAGED_BY},"
                 f"{model.LABEL_POOL}={model.POOL_WARM}")
NAME_PREFIX = "jiomosa-pool-"
RETRY = 2.0  # seconds before a failed pass is tried again


def new_pod_name() -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # as the API server's generated names
    return NAME_PREFIX + "".join(secrets.choice(alphabet) for _ in range(8))


class WarmPool:
    """The warm pods of the pool namespaces; ``claim`` hands one to a session."""

    def __init__(self, settings: OperatorSettings, kube: Callable[[], KubeApi]) -> None:
        self.settings = settings
        self._kube = kube
        # With no pool (size 0, or Selenium pods) one pass still deletes leftover pool pods.
        self.namespaces = settings.served_pool_namespaces
        self._wake = asyncio.Event()
        self._tasks = TaskSet("warm-pool")

    def serves(self, namespace: str) -> bool:
        return bool(self.settings.pool_size) and namespace in self.namespaces

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        """Start refilling (or, with a size of 0, delete leftover pool pods once)."""
        if self.namespaces:
            self._tasks.spawn(self._run(), "warm-pool-refill")

    async def stop(self) -> None:
        """Stop refilling. The warm pods stay: the next operator takes them over."""
        await self._tasks.close()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            failed = False
            for namespace in self.namespaces:
                try:
                    await self.reconcile(namespace)
                except (ApiError, OSError, TimeoutError) as exc:
                    failed = True
                    log.warning("warm pool of %s: %s", namespace, exc)
            if not self.settings.pool_size and not failed:
                return  # leftovers deleted; nothing to keep
            interval = RETRY if failed else self.settings.pool_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    # ------------------------------------------------------------------ upkeep
    async def warm_pods(self, namespace: str) -> list[dict[str, Any]]:
        data = await self._kube().call("GET", pod_path(namespace),
                                       params={"labelSelector": WARM_SELECTOR})
        return list(data.get("items") or [])

    async def reconcile(self, namespace: str) -> PoolPlan:
        """One look at a namespace's pool: delete and create as ``plan_pool`` says."""
        pods = await self.warm_pods(namespace)
        plan = plan_pool(pods, self.settings.pool_size, utcnow(),
                         self.settings.pool_start_timeout)
        by_name = {p["metadata"]["name"]: p for p in pods}
        for name in plan.delete:
            await self._delete(by_name[name])
        for _ in range(plan.create):
            await self._create(namespace)
        return plan

    async def _create(self, namespace: str) -> None:
        for _ in range(3):  # a name taken (409): another one
            try:
                pod = await self._kube().create(
                    pod_path(namespace), pool_pod(namespace, new_pod_name(), self.settings))
            except ApiError as exc:
                if exc.status == 409:
                    continue
                raise
            log.info("warm pool of %s: created %s", namespace, pod["metadata"]["name"])
            return

    async def _delete(self, pod: Mapping[str, Any]) -> None:
        """Delete a warm pod, only as it was read: a pod claimed meanwhile (its version moved)
        is left to its session."""
        meta = pod["metadata"]
        try:
            await self._kube().delete(pod_path(meta["namespace"], meta["name"]), {
                "apiVersion": "v1", "kind": "DeleteOptions",
                "preconditions": {"uid": meta["uid"],
                                  "resourceVersion": meta["resourceVersion"]}})
        except ApiError as exc:
            if exc.status != 409:
                raise
            return
        log.info("warm pool of %s: deleted %s", meta["namespace"], meta["name"])

    # ------------------------------------------------------------------ claims
    async def claim(self, session: Mapping[str, Any]) -> dict[str, Any] | None:
        """Make a ready warm pod the session's (the patched pod), or None when no ready pod
        could be had (every candidate went to another session, or there is none)."""
        namespace = session["metadata"]["namespace"]
        for _ in range(3):
            pods = [p for p in await self.warm_pods(namespace)
                    if not p["metadata"].get("deletionTimestamp") and pod_state(p).ready]
            if not pods:
                return None
            # Sessions starting at once try the pods in different orders: fewer lost races.
            random.shuffle(pods)
            for pod in pods:
                try:
                    claimed = await self._kube().merge_patch(
                        pod_path(namespace, pod["metadata"]["name"]), claim_patch(session, pod))
                except ApiError as exc:
                    if exc.status in (404, 409):
                        continue  # claimed (or deleted) by someone else since it was read
                    raise
                self.wake()  # refill now
                return claimed
        return None
