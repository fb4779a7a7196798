"""Names of the BrowserSession contract (crds/browsersession.yaml), shared by the operator and the
streamer's Kubernetes backend. No Kopf here: the streamer imports this module."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Final

GROUP: Final = "jiomosa.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "BrowserSession"
PLURAL: Final = "browsersessions"

# Phases of status.phase.
PENDING: Final = "Pending"
STARTING: Final = "Starting"
READY: Final = "Ready"
FAILED: Final = "Failed"
EXPIRED: Final = "Expired"
TERMINATING: Final = "Terminating"
FINISHED_PHASES: Final = frozenset({FAILED, EXPIRED})

FINALIZER: Final = "jiomosa.io/browser-cleanup"

# Labels and annotations on pods the operator makes.
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "jiomosa-operator"
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_SESSION_UID: Final = "jiomosa.io/session-uid"
LABEL_SESSION: Final = "jiomosa.io/session"
ANNOTATION_SESSION: Final = "jiomosa.io/session"
ANNOTATION_WEBDRIVER_PORT: Final = "jiomosa.io/webdriver-port"
"""On a pod: the port its WebDriver listens on, when it is not the operator's webdriver_port.
Honoured only with ``JIOMOSA_OPERATOR_TRUST_PORT_ANNOTATION`` (single-host test setups)."""
ANNOTATION_AGENT_PORT: Final = "jiomosa.io/agent-port"
"""On an agent pod: the port ``jiomosa browser`` listens on, when it is not the operator's
agent_port. Honoured only with ``JIOMOSA_OPERATOR_TRUST_PORT_ANNOTATION`` (tests)."""
LABEL_POOL: Final = "jiomosa.io/pool"
"""On a warm-pool pod: ``warm`` while it waits for a session, ``claimed`` once a session owns
it (it never returns to the pool)."""
POOL_WARM: Final = "warm"
POOL_CLAIMED: Final = "claimed"

# The Secret holding a BrowserSession's CDP token (the agent's bearer token): made by the
# operator with a generated name, owned by the session, named in status.endpoints.cdpTokenSecret.
TOKEN_SECRET_KEY: Final = "token"

# Annotations on BrowserSessions.
ANNOTATION_ACTIVITY: Final = "jiomosa.io/last-activity"
"""RFC 3339 time of the last user activity; the streamer refreshes it (at most every 15 s)."""
ANNOTATION_STREAMER_SESSION: Final = "jiomosa.io/session-id"
"""The streamer's session id for a BrowserSession the streamer created."""
LABEL_CREATED_BY: Final = "app.kubernetes.io/created-by"
CREATED_BY_STREAMER: Final = "jiomosa-streamer"

CONTAINER: Final = "browser"


def made_by_streamer(resource: Any) -> bool:
    """Whether a streamer created this BrowserSession (it deletes it; nobody views it by a
    viewer token: it is reached through the streamer's own session id only)."""
    labels = ((resource or {}).get("metadata") or {}).get("labels") or {}
    return bool(labels.get(LABEL_CREATED_BY) == CREATED_BY_STREAMER)


def generated_prefix(session_name: str, kind: str) -> str:
    """The ``generateName`` of a session's Secret of ``kind`` (``cdp``, ``viewer``)."""
    return f"{session_name[:200].rstrip('.-')}-{kind}-"


def is_generated(session_name: str, kind: str, secret_name: object) -> bool:
    """Whether ``secret_name`` is what the API server generates from that prefix (five
    characters of ``[a-z0-9]``). Status is not trusted blindly: a name recorded there that is
    not the session's own Secret is neither read (streamer) nor deleted (operator)."""
    if not isinstance(secret_name, str):
        return False
    prefix = generated_prefix(session_name, kind)
    rest = secret_name[len(prefix):]
    return (secret_name.startswith(prefix) and len(rest) == 5
            and all(c.isdigit() or "a" <= c <= "z" for c in rest))


# Times in status and annotations: RFC 3339, as Kubernetes writes them.
def utcnow() -> datetime:
    return datetime.now(UTC)


def fmt_time(moment: datetime) -> str:
    """RFC 3339 in UTC, second precision (Kubernetes' own format)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time (or Unix seconds), or None when absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC) if math.isfinite(value) else None
    text = str(value).strip()
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
