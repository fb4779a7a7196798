"""One error taxonomy for everything a client can be told.

Every failure that is the client's business is a ``ClientError``: it carries the HTTP status to
answer with and a message that is safe to show. REST answers ``{"error": message}`` with that
status; Socket.IO and the plain WebSocket send an ``error`` event with the message; a relayed
request carries both back to the streamer the client is on. Anything else is a bug: the client
gets "internal error" and the log gets the stack trace.
"""

from __future__ import annotations

from typing import Any

INTERNAL_ERROR = "internal error"


class ClientError(Exception):
    """A request cannot be served; ``status`` is the HTTP status to answer with."""

    status: int = 400
    public_message: str | None = None
    """What the client is told when it differs from ``str(exc)`` (which may name internals)."""

    def __init__(self, message: str = "", status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.extra = extra

    @property
    def message(self) -> str:
        return self.public_message or str(self) or type(self).__name__


class BadRequest(ClientError, ValueError):
    """The client sent something unusable; the message says what."""

    status = 400


class SessionError(ClientError):
    """A request about a session cannot be served (unknown, not ready, at capacity, ...)."""


class SessionRestarting(SessionError):
    """The session's browser died and a new one is starting: input and loads wait for it.
    ``retry_after`` (whole seconds, as with every error that has one) becomes REST's
    ``Retry-After``."""

    status = 503

    def __init__(self, message: str = "the browser is restarting") -> None:
        super().__init__(message, retry_after=1)


def client_error(exc: BaseException) -> ClientError | None:
    """The client-facing form of ``exc``, or None when it is a bug (answer 500, log it)."""
    return exc if isinstance(exc, ClientError) else None


def status_of(exc: BaseException) -> tuple[int, str, dict[str, Any]]:
    """(HTTP status, safe message, extra fields) for any exception."""
    known = client_error(exc)
    if known is None:
        return 500, INTERNAL_ERROR, {}
    return known.status, known.message, known.extra
