"""What a session's browser comes from: the provider protocol and the lease it hands out.

A provider (``pooled``: local chromedriver or a Selenium Grid; ``kubernetes``: a BrowserSession
per browser) is chosen by the composition root (``jiomosa.app``); sessions only see leases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from jiomosa.browser import driver
from jiomosa.core import executors
from jiomosa.core.types import BrowserEndpoint, Viewport


@dataclass
class BrowserLease:
    """A browser handed to one session. ``release`` quits it."""

    endpoint: BrowserEndpoint
    _local: driver.LocalBrowser | None = None

    async def release(self) -> None:
        if self._local is not None:
            await executors.run("browser", self._local.quit)
        else:
            await executors.run("browser", driver.quit_remote, self.endpoint.webdriver_url,
                                self.endpoint.webdriver_session_id)

    def note_activity(self, at: float) -> None:
        """The session saw user activity at ``at`` (Unix time); backends that reap idle
        browsers themselves (kubernetes) are told."""

    @property
    def replaceable(self) -> bool:
        """When this browser dies, the session may get a new one from the provider (crash
        recovery). False for a browser the backend only lends (a kubectl-made session)."""
        return True


class BrowserProvider(Protocol):
    """Hands out browsers for new sessions."""

    async def start(self) -> None: ...

    async def acquire(self, width: int, height: int, scale: float = 1.0) -> BrowserLease: ...

    def lease_for(self, endpoint: BrowserEndpoint) -> BrowserLease:
        """A lease for a browser another streamer started (adoption after failover)."""
        ...

    def request_refill(self) -> None: ...

    async def find(self, name: str) -> tuple[BrowserLease, Viewport] | None:
        """A browser the backend hands out for the client's id ``name`` that no streamer serves
        (Kubernetes: the kubectl-made BrowserSession whose viewer token ``name`` is; never a
        resource name), or None. Must cost nothing for an id it cannot know."""
        ...

    async def listed(self) -> list[dict[str, Any]]:
        """Summaries (as ``/api/sessions`` lists them, to the admin only) of such browsers."""
        ...

    @property
    def warm(self) -> int: ...

    async def stop(self) -> None: ...
