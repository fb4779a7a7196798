"""Thread pools for blocking work, one per kind, so that one kind cannot starve another.

``asyncio.to_thread`` shares the loop's default executor (``cpu + 4`` threads, 6 on 2 cores)
among everything: a burst of JPEG re-encodes, slow browser starts or stuck lookups held it all.
Each kind here has its own bounded pool, sized from the settings:

- ``jpeg``: re-encodes of frames to a lower quality (``frames/hub.py``), CPU-bound, so about one
  thread per core is plenty (``JIOMOSA_JPEG_THREADS``);
- ``browser``: Selenium starts and quits (``providers/``), which wait on chromedriver or a Grid
  for seconds (``JIOMOSA_BROWSER_THREADS``).

Work that waits for a full pool queues there; a caller's timeout (``asyncio.wait_for``) cancels
it while it is still queued. DNS needs no pool at all (``core/dns.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, ParamSpec, TypeVar

Kind = Literal["jpeg", "browser"]
DEFAULT_SIZES: dict[str, int] = {"jpeg": 2, "browser": 8}

P = ParamSpec("P")
T = TypeVar("T")


class Executors:
    """Named thread pools; shut down in the order they were named."""

    def __init__(self, sizes: Mapping[str, int]) -> None:
        self._pools = {kind: ThreadPoolExecutor(max_workers=max(1, size),
                                                thread_name_prefix=f"jiomosa-{kind}")
                       for kind, size in sizes.items()}

    async def run(self, kind: str, fn: Callable[P, T], *args: P.args,
                  **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in the ``kind`` pool (context variables carried, as
        ``asyncio.to_thread`` does); RuntimeError after shutdown."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pools[kind], call)

    def shutdown(self) -> None:
        """Refuse new work, drop queued work, and wait for running work, pool by pool."""
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


_default: Executors | None = None


def configure(sizes: Mapping[str, int]) -> Executors:
    """Replace the process's pools (the app does this at start) and return them."""
    global _default
    _default = Executors(sizes)
    return _default


def current() -> Executors:
    """The process's pools, built with the default sizes when nobody configured them."""
    global _default
    if _default is None:
        _default = Executors(DEFAULT_SIZES)
    return _default


async def run(kind: Kind, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in the process's ``kind`` pool."""
    return await current().run(kind, fn, *args, **kwargs)


async def shutdown() -> None:
    """Shut the process's pools down (waiting in a thread: the loop keeps running)."""
    global _default
    pools, _default = _default, None
    if pools is not None:
        await asyncio.to_thread(pools.shutdown)
