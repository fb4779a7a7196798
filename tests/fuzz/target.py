"""The fuzz target: a streamer on loopback with witness sessions, the figures of a run, and the
URLs the fuzz may hand the streamer (see fuzzing.py)."""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from helpers import PAGE_HOST, TRAP_HOST, PageServer, StreamerProcess, build_pages
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

# hypothesis keeps caches in its home directory: not in the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "jiomosa-hypothesis")

T = TypeVar("T")
INTERNAL = "internal error"  # what a client is told of a bug (core/errors.py), with 500


# ----------------------------------------------------------------------------- figures
@dataclass
class Figures:
    """What one run did and found."""

    requests: int = 0
    messages: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[tuple[str, int]] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    """500 answers and ``internal error`` events: each is a finding."""
    unexpected_5xx: list[str] = field(default_factory=list)
    other_5xx: Counter[str] = field(default_factory=Counter)
    traces_to_clients: list[str] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    unanswered: list[str] = field(default_factory=list)
    """Round trips (ping) the streamer did not answer in time: each is a finding."""
    blocked_in_browser: list[str] = field(default_factory=list)
    """URLs the policy let through at the API but the browser then refused (redirects)."""
    rest_seconds: float = 0.0
    event_seconds: float = 0.0
    rss_start_mb: float = 0.0
    rss_warm_mb: float = 0.0
    rss_end_mb: float = 0.0
    witnesses_ready: int = 0
    witnesses: int = 0
    log_problems: list[str] = field(default_factory=list)

    @property
    def five_xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def internal_errors(self) -> int:
        return len(self.server_errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "messages": self.messages,
            "statuses": dict(sorted(self.statuses.items())),
            "by_operation": self._by_operation(),
            "5xx": self.five_xx, "500_or_internal_error": self.internal_errors,
            "expected_5xx": dict(self.other_5xx), "unexpected_5xx": self.unexpected_5xx[:20],
            "traces_to_clients": self.traces_to_clients[:20],
            "events_received": dict(self.events.most_common(20)),
            "socket_reconnects": self.reconnects,
            "unanswered_round_trips": self.unanswered[:10],
            "blocked_in_browser": sorted(set(self.blocked_in_browser))[:20],
            "rest_seconds": round(self.rest_seconds, 1),
            "event_seconds": round(self.event_seconds, 1),
            "rss_start_mb": round(self.rss_start_mb, 1),
            "rss_warm_mb": round(self.rss_warm_mb, 1),
            "rss_end_mb": round(self.rss_end_mb, 1),
            "rss_end_vs_warm": round(self.rss_end_mb / self.rss_warm_mb, 3)
            if self.rss_warm_mb else None,
            "witnesses_ready": f"{self.witnesses_ready}/{self.witnesses}",
            "log_problems": self.log_problems[:20],
            "findings": self.server_errors[:20],
        }

    def _by_operation(self) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        for (label, status), n in sorted(self.by_operation.items()):
            out.setdefault(label, {})[status] = n
        return out

    def problems(self, rss_ratio: float = 1.10) -> list[str]:
        """Every acceptance criterion that does not hold (empty: the run passed)."""
        out = []
        if self.server_errors:
            out.append(f"{len(self.server_errors)} answers were 500 / internal error")
        if self.unexpected_5xx:
            out.append(f"{len(self.unexpected_5xx)} unexpected 5xx answers")
        if self.unanswered:
            out.append(f"{len(self.unanswered)} round trips were not answered")
        if self.traces_to_clients:
            out.append("a stack trace reached a client")
        if self.witnesses_ready != self.witnesses:
            out.append(f"only {self.witnesses_ready}/{self.witnesses} sessions still ready")
        if self.log_problems:
            out.append(f"{len(self.log_problems)} stack traces / errors in the streamer log")
        if self.rss_warm_mb and self.rss_end_mb > self.rss_warm_mb * rss_ratio:
            out.append(f"RSS {self.rss_end_mb:.1f} MiB after the run, more than "
                       f"{rss_ratio:.0%} of {self.rss_warm_mb:.1f} MiB before it")
        return out


# ----------------------------------------------------------------------------- the target
class LoopThread:
    """An asyncio loop in a thread, for the async clients hypothesis (sync) drives."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="fuzz-loop")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class FuzzTarget:
    """A streamer on loopback with a page server, capped sessions and witness sessions."""

    def __init__(self, workdir: Path, witnesses: int = 2) -> None:
        self.trap = PageServer(TRAP_HOST)
        self.pages = build_pages(self.trap)
        self.streamer = StreamerProcess({
            "JIOMOSA_ALLOW_HOSTS": PAGE_HOST,
            "JIOMOSA_MAX_SESSIONS": str(witnesses + 1),  # one browser for the fuzz itself
            "JIOMOSA_WARM_BROWSERS": "1",
            "JIOMOSA_IDLE_TIMEOUT": "3600",
            "JIOMOSA_MAX_DURATION": "0",
        }, log_dir=workdir)
        self.n_witnesses = witnesses
        self.witnesses: list[str] = []
        self.created: list[str] = []  # sessions the fuzz made
        self.tokens: list[str] = []  # share tokens and ids seen in answers
        self.http = requests.Session()
        self.http.trust_env = False  # no proxy from the environment: loopback only
        self.log_offset = 0

    @property
    def base(self) -> str:
        return self.streamer.base

    @property
    def pid(self) -> int:
        assert self.streamer.proc is not None
        return self.streamer.proc.pid

    def start(self) -> FuzzTarget:
        self.streamer.start()
        pages = ["/app", "/static", "/form"]
        for i in range(self.n_witnesses):
            r = self.http.post(self.base + "/api/session/create",
                               json={"url": self.pages.url(pages[i % len(pages)])}, timeout=60)
            assert r.status_code == 201, r.text
            self.witnesses.append(r.json()["session_id"])
        return self

    def stop(self) -> int | None:
        code = self.streamer.stop()
        self.pages.shutdown()
        self.trap.shutdown()
        return code

    def mark_log(self) -> None:
        self.log_offset = self.streamer.log_path.stat().st_size

    def log_problems(self) -> list[str]:
        """Stack traces and error records the streamer logged since ``mark_log``."""
        with open(self.streamer.log_path, "rb") as f:
            f.seek(self.log_offset)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            record: dict[str, Any] = {}
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    pass
            if record.get("level") in ("error", "critical"):
                # The message and the end of the trace: where it was raised, and what.
                out.append(f"{record.get('logger')}: {record.get('msg')} "
                           f"{str(record.get('exc', ''))[-1200:]}")
            elif not record and "Traceback" in line:
                out.append(line[:300])  # a library's own handler, printed besides the JSON
        return out

    def close_created(self) -> None:
        """Close what the fuzz created: the run's end leaves the witnesses, as at its start."""
        for sid in list(self.created):
            self.http.post(f"{self.base}/api/session/{sid}/close", timeout=60)
            self.created.remove(sid)

    def witnesses_ready(self) -> int:
        ready = 0
        for sid in self.witnesses:
            r = self.http.get(f"{self.base}/api/session/{sid}/info", timeout=30)
            if r.status_code == 200 and r.json().get("status") == "ready":
                ready += 1
        return ready

    def learn(self, answer: Any) -> None:
        """Keep share tokens and ids the streamer handed out, to use them later."""
        if isinstance(answer, dict):
            for key in ("share_token", "share_id", "token"):
                value = answer.get(key)
                if isinstance(value, str) and value not in self.tokens:
                    self.tokens.append(value)
                    del self.tokens[:-20]
            for value in answer.values():
                if isinstance(value, dict | list):
                    self.learn(value)
        elif isinstance(answer, list):
            for value in answer:
                self.learn(value)


# ----------------------------------------------------------------------------- safe URLs
# Punctuation only: whatever it does to the parse, it cannot spell a public host.
JUNK = st.text(alphabet="/\\@:#?%[]. \t!$&'()*+,;=~_-", max_size=4)


def safe_urls(target: FuzzTarget) -> st.SearchStrategy[str]:
    pages, trap = target.pages, target.trap
    page_host = f"{PAGE_HOST}:{pages.port}"
    fixed = [pages.url(p) for p in ("/app", "/static", "/form", "/submitted", "/redirect-ok",
                                    "/redirect-loopback", "/private-subresources", "/nope")]
    fixed += [trap.url("/"), "http://127.0.0.1/", "http://10.0.0.1/", "http://[::1]/",
              "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]/",
              "http://[fd00:ec2::254]/", "http://localhost/", "http://x.localhost/",
              "http://metadata.google.internal/", "http://2130706433/", "http://0x7f000001/",
              "http://127.1/", "javascript:alert(1)", "file:///etc/passwd", "about:blank",
              "data:text/html,hi", f"ftp://{page_host}/", "", " ", "http://", "https://",
              f"http://user:pw@{page_host}/app", f"HTTP://{page_host}/static",
              f"http://{page_host}/static#x", f"http://{page_host}:99999/", f"ws://{page_host}/"]
    hosts = [page_host, PAGE_HOST, "127.0.0.1", "[::1]", "10.1.2.3", "169.254.169.254",
             "0.0.0.0", "[fd00::1]", "localhost", f"{TRAP_HOST}:{trap.port}"]
    composed = st.builds(
        lambda scheme, junk, host, path: f"{scheme}{junk}{host}/{path}",
        st.sampled_from(["http://", "https://", "HTTP://", "http:", "http:/", "//", "ws://",
                         "http:\\\\", ""]),
        JUNK, st.sampled_from(hosts), st.text(max_size=40))
    return st.one_of(st.sampled_from(fixed), composed)


