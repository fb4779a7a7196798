"""Fuzzing every entry point of a real streamer (issue #10): the REST contract with schemathesis
(``docs/openapi.json``), the Socket.IO and plain-WebSocket events with hypothesis (the event
table ``transports/events.py`` EVENTS, the contract ``docs/protocol.md``).

Used by the smoke run of ``make test`` (tests/fuzz/test_fuzz_smoke.py) and the long run of
``make fuzz`` (bench/fuzz_api.py). The target is one streamer process on loopback with real
Chromium sessions ("witnesses", created before the run, which must still be ``ready`` after it)
so that session paths reach real sessions, not only 404s.

Only loopback is ever contacted: requests go to the streamer's loopback address (no proxies
from the environment, no redirects followed), and every URL a request hands the streamer
(``create``/``load``) is replaced by one from ``safe_urls``: the loopback test pages, or
addresses the URL policy refuses (loopback, private, metadata), dressed in odd syntax made of
punctuation only, which cannot spell a public host name or number. ``JIOMOSA_MAX_SESSIONS``
caps what the fuzz may start at one browser besides the witnesses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from fuzz_events import EventFuzzer
from fuzz_rest import RestFuzzer
from rawclients import rss_mb, settled_rss_mb
from target import Figures, FuzzTarget

__all__ = ["Figures", "fuzz_run"]


# ----------------------------------------------------------------------------- a whole run
def fuzz_run(workdir: Path, requests_wanted: int, messages_wanted: int,
             warmup_requests: int = 500, warmup_messages: int = 100,
             log: Callable[[str], None] = print) -> Figures:
    """Start a target, warm it up, fuzz REST then events, and measure everything."""
    figures = Figures()
    target = FuzzTarget(workdir).start()
    try:
        figures.witnesses = len(target.witnesses)
        figures.rss_start_mb = rss_mb(target.pid)
        target.mark_log()
        rest = RestFuzzer(target, figures)
        events = EventFuzzer(target, figures)
        # Warm-up: the first requests of each kind import and cache what the streamer keeps
        # for its whole life; the memory criterion compares against the warm process.
        rest.run(warmup_requests, log)
        events.run(warmup_messages, log)
        target.close_created()
        figures.rss_warm_mb = asyncio.run(settled_rss_mb(target.pid, settle=3.0, timeout=30))
        log(f"RSS {figures.rss_start_mb:.1f} MiB at start, {figures.rss_warm_mb:.1f} MiB warm")
        rest.run(requests_wanted, log)
        events.run(messages_wanted, log)
        events.close()
        target.close_created()
        figures.rss_end_mb = asyncio.run(settled_rss_mb(target.pid, settle=3.0, timeout=30))
        figures.witnesses_ready = target.witnesses_ready()
        figures.log_problems = target.log_problems()
    finally:
        code = target.stop()
        if code not in (0, None):
            figures.log_problems.append(f"streamer exited with {code}")
    return figures
