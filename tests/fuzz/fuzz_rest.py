"""schemathesis over docs/openapi.json (see fuzzing.py)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import requests
import schemathesis
from helpers import ADMIN, ROOT
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException
from schemathesis import GenerationMode
from target import INTERNAL, Figures, FuzzTarget, safe_urls

OPENAPI = ROOT / "docs" / "openapi.json"
# 5xx answers the contract documents for conditions a fuzz run creates on purpose; anything
# else in the 5xx range is reported as a finding.
EXPECTED_5XX = {
    (503, "Too many sessions: the server is at capacity"),
    (503, "no frame yet"),
    # load: the URL passed the check, the page then went where the policy forbids (a
    # redirect to loopback): the browser refused it, as it must.
    (502, "the URL is blocked by the URL policy"),
}
# load/create: the URL passed the policy, but the browser could not load it (e.g. `https://`
# to one of the test pages, which speak plain HTTP: net::ERR_SSL_PROTOCOL_ERROR). The
# contract's 502 with Chrome's error name; only the prefix is fixed.
EXPECTED_5XX_PREFIXES = ((502, "navigation failed: net::ERR_"),)


def expected_5xx(status: int, message: str) -> bool:
    return (status, message) in EXPECTED_5XX or any(
        status == code and message.startswith(prefix) for code, prefix in EXPECTED_5XX_PREFIXES)

# ----------------------------------------------------------------------------- REST
class RestFuzzer:
    """schemathesis over docs/openapi.json, positive and negative cases of every operation."""

    def __init__(self, target: FuzzTarget, figures: Figures) -> None:
        self.target = target
        self.figures = figures
        self.schema = schemathesis.openapi.from_path(OPENAPI)
        self.operations = [r.ok() for r in self.schema.get_all_operations()]
        self.urls = safe_urls(target)
        self.exhausted: set[tuple[str, GenerationMode]] = set()

    def run(self, requests_wanted: int, log: Callable[[str], None] = print) -> None:
        start = time.monotonic()
        goal = self.figures.requests + requests_wanted
        per_case = max(1, math.ceil(requests_wanted / (2 * len(self.operations))))
        while self.figures.requests < goal:
            before = self.figures.requests
            for op in self.operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    left = goal - self.figures.requests
                    if left > 0 and (op.label, mode) not in self.exhausted:
                        self._fuzz(op, mode, min(per_case, left))
            log(f"REST: {self.figures.requests} requests, statuses "
                f"{dict(sorted(self.figures.statuses.items()))}")
            if self.figures.requests == before:
                break  # nothing more to generate
        self.figures.rest_seconds += time.monotonic() - start

    def _fuzz(self, op: Any, mode: GenerationMode, examples: int) -> None:
        try:
            strategy = op.as_strategy(generation_mode=mode)
        except Exception:  # an operation without anything to make negative, say
            return

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate])
        @given(case=strategy, data=st.data())
        def run(case: Any, data: st.DataObject) -> None:
            self.call(case, data)

        try:
            run()
        except HypothesisException:  # Unsatisfiable: nothing in it can be made invalid
            self.exhausted.add((op.label, mode))

    def call(self, case: Any, data: st.DataObject) -> None:
        target = self.target
        path_params = case.path_parameters or {}
        if "session_id" in path_params:
            closing = case.path.endswith("/close") or "/share/" in case.path
            pool = target.created if closing else target.witnesses + target.created
            if pool and data.draw(st.integers(0, 3), label="real session") > 0:
                path_params["session_id"] = data.draw(st.sampled_from(pool), label="sid")
        if "token" in path_params and target.tokens and data.draw(st.booleans()):
            path_params["token"] = data.draw(st.sampled_from(target.tokens))
        if isinstance(case.headers, dict) and target.tokens:
            for name in [n for n in case.headers if "share" in n.lower()]:
                if data.draw(st.booleans()):
                    case.headers[name] = data.draw(st.sampled_from(target.tokens))
        query = case.query if isinstance(case.query, dict) else None
        if query is not None:
            if "share" in query and target.tokens and data.draw(st.booleans()):
                query["share"] = data.draw(st.sampled_from(target.tokens))
            if "after" in query or "timeout" in query:
                # Long polls would hold each request up to 30 s: answer within 0.3 s.
                try:
                    long = float(query.get("timeout", 25)) > 0.3
                except (TypeError, ValueError):
                    long = False
                if long:
                    query["timeout"] = 0.3
        if isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
            case.body["url"] = data.draw(self.urls, label="url")
        headers = {}
        auth = data.draw(st.sampled_from(["none", "none", "admin", "junk", "bytes"]))
        if auth == "admin":
            headers.update(ADMIN)
        elif auth == "junk":
            headers["Authorization"] = "Bearer " + data.draw(
                st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255),
                        max_size=40))
        elif auth == "bytes":
            headers["Authorization"] = data.draw(st.binary(max_size=40)).replace(
                b"\r", b"").replace(b"\n", b"")  # requests refuses line breaks in headers
        try:
            response = case.call(base_url=target.base, session=target.http, headers=headers,
                                 timeout=60, allow_redirects=False)
        except (requests.exceptions.InvalidHeader, ValueError, UnicodeError):
            return  # the client library refused to send it: not a request
        self.record(case, response)

    def record(self, case: Any, response: Any) -> None:
        figures, target = self.figures, self.target
        figures.requests += 1
        status = response.status_code
        figures.statuses[status] += 1
        figures.by_operation[(case.operation.label, status)] += 1
        content = response.content or b""
        text = content[:4000].decode(errors="replace") if content[:1] in (b"{", b"[") else ""
        what = f"{case.method.upper()} {case.formatted_path}"
        if "Traceback" in text or 'File "' in text:
            figures.traces_to_clients.append(f"{what} -> {status}: {text[:300]}")
        message = ""
        if text:
            try:
                answer = json.loads(text)
            except ValueError:
                answer = None
            if isinstance(answer, dict):
                message = str(answer.get("error", ""))
                if status < 300:
                    target.learn(answer)
                    sid = answer.get("session_id")
                    if (status == 201 and isinstance(sid, str)
                            and sid not in target.witnesses and sid not in target.created):
                        target.created.append(sid)
        if status >= 500:
            if status == 500 or message == INTERNAL:
                figures.server_errors.append(
                    f"{what} -> {status} {message!r}: {case.as_curl_command()[:600]}")
            elif expected_5xx(status, message):
                figures.other_5xx[f"{status} {message}"] += 1
                if message == "the URL is blocked by the URL policy" and isinstance(
                        case.body, dict):
                    figures.blocked_in_browser.append(str(case.body.get("url"))[:200])
            else:
                figures.unexpected_5xx.append(f"{what} -> {status} {message!r}")
                figures.other_5xx[f"{status} {message}"] += 1
        if case.path.endswith("/close") and status == 200:
            closed = case.path_parameters.get("session_id")
            if closed in target.created:
                target.created.remove(closed)


