"""``jiomosa browser``: the entry point of a browser pod (docs/operator.md, images/README.md).

One process per pod: it starts Chromium headless with DevTools on loopback, runs the egress
proxy with the URL policy in the pod and points Chromium at it, keeps its own CDP connection
that pauses every request for the same policy (``Fetch``) and refuses downloads, and serves one
port: ``/readyz`` and a CDP WebSocket proxy that demands the session's bearer token. The pod
therefore enforces the URL policy for its whole life, whoever is attached.
"""
