"""A short fuzz run of every entry point (issue #10 acceptance; ``make fuzz`` runs >= 10,000
requests and 10,000 messages): schemathesis over docs/openapi.json, hypothesis over the
Socket.IO and plain-WebSocket events, against a real streamer with real Chromium sessions.
No 500 and no ``internal error``, no stack trace to a client or in the log, the sessions made
before the run still ready after it, and the streamer's memory back near where it was."""

from __future__ import annotations

import json
from pathlib import Path

from fuzzing import fuzz_run


def test_fuzz_smoke(tmp_path: Path) -> None:
    figures = fuzz_run(tmp_path, requests_wanted=300, messages_wanted=300, warmup_requests=500,
                       warmup_messages=100)
    print(json.dumps(figures.as_dict(), indent=1))
    assert figures.requests >= 300 and figures.messages >= 300, figures.as_dict()
    assert not figures.problems(), (figures.problems(), figures.as_dict())
