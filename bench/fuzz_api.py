"""Fuzz every entry point of the streamer (issue #10 acceptance): ``make fuzz-api``.

    .venv/bin/python bench/fuzz_api.py [--requests 10000] [--messages 10000] [--warmup-requests 500]

schemathesis over docs/openapi.json (positive and negative cases of every operation) and
hypothesis over the Socket.IO and plain-WebSocket events, against a real streamer with real
Chromium sessions, on loopback only (tests/fuzz/fuzzing.py says how URLs are kept local).
Prints the figures and writes them to bench/out/fuzz.json (the streamer's log to
bench/out/fuzz-streamer.log); exits 1 if a criterion fails:
no 500 / ``internal error``, no unexpected 5xx, no stack trace to a client or in the log, the
sessions made before the run still ready, and the streamer's RSS after the run within 10 % of
what it was once warm (the start, cold, is printed too).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "fuzz")]
from fuzzing import fuzz_run  # noqa: E402

OUT = HERE / "out"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--warmup-requests", type=int, default=500)
    parser.add_argument("--warmup-messages", type=int, default=500)
    args = parser.parse_args()
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {line}", flush=True)

    with tempfile.TemporaryDirectory(prefix="jiomosa-fuzz-") as workdir:
        figures = fuzz_run(Path(workdir), args.requests, args.messages, args.warmup_requests,
                           args.warmup_messages, log)
        OUT.mkdir(exist_ok=True)
        for kept in Path(workdir).glob("streamer-*.log"):  # for whoever reads a failure
            shutil.copy(kept, OUT / "fuzz-streamer.log")
        problems = figures.problems()
        report = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "seconds": round(time.monotonic() - started, 1),
            **figures.as_dict(),
            "problems": problems,
        }
    OUT.mkdir(exist_ok=True)
    (OUT / "fuzz.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    print("FUZZ: " + ("PASSED" if not problems else "FAILED: " + "; ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
