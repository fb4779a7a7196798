"""The CDP tokens of agent pods, derived from one key (``JIOMOSA_OPERATOR_TOKEN_KEY``).

A session's token is HMAC-SHA256(key, "session", its uid): the operator computes it whenever it
needs it (to navigate the browser on a ``spec.url`` change) without ever reading a Secret back
(it may only create and delete them). A warm-pool pod's claim token is HMAC-SHA256(key,
"claim", namespace/name): it lets the operator hand that one pod a session's token, once.
Distinct purposes keep one kind of token from ever being the other. Pure functions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SESSION_PREFIX = "jcdp_"


def _derive(key: str, purpose: str, subject: str) -> str:
    mac = hmac.new(key.encode(), f"{purpose}\x00{subject}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()  # 43 characters, 256 bits


def session_token(key: str, session_uid: str) -> str:
    """The bearer token of the session's browser (``jcdp_`` + 43 characters)."""
    if not key:
        raise ValueError("no token key (JIOMOSA_OPERATOR_TOKEN_KEY)")
    return SESSION_PREFIX + _derive(key, "session", session_uid)


def claim_token(key: str, namespace: str, pod_name: str) -> str:
    """What the operator shows a warm-pool pod to hand it a session's token."""
    if not key:
        raise ValueError("no token key (JIOMOSA_OPERATOR_TOKEN_KEY)")
    return _derive(key, "claim", f"{namespace}/{pod_name}")
