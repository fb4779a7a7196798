#!/usr/bin/env python3
"""Runs the fuzz_client libFuzzer binary until it has used CPU_SECONDS of CPU, then prints
the figures: executions, exec/s, coverage, crashes. Exit status 1 if anything crashed.

    python3 clients/c/fuzz/run.py BINARY WORKDIR CPU_SECONDS

WORKDIR gets seeds/ (fuzz/seeds.py, regression inputs included), corpus/ (kept between runs:
a later run starts where this one stopped), artifacts/ (crashing inputs) and fuzz.log.
libFuzzer's -max_total_time counts wall time; on a busy machine that is less CPU than asked
for, so the fuzzer is started again, on the grown corpus, until the CPU time is reached.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    binary, work, target = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), float(sys.argv[3])
    seeds, corpus, artifacts = work / "seeds", work / "corpus", work / "artifacts"
    for d in (corpus, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(HERE / "seeds.py"), str(seeds)], check=True)
    log = work / "fuzz.log"
    executions, cov, ft, peak_rss, runs, failed = 0, 0, 0, 0, 0, False
    cpu0, wall0 = cpu_of_children(), time.monotonic()
    log.write_text("")
    while cpu_of_children() - cpu0 < target and not failed:
        left = max(5, int(target - (cpu_of_children() - cpu0) + 0.999))
        start = log.stat().st_size
        with log.open("a") as out:  # written as it runs: `tail -f` it to watch
            proc = subprocess.run(
                [str(binary), f"-max_total_time={left}", "-timeout=10", "-rss_limit_mb=1024",
                 "-max_len=8192", "-print_final_stats=1", f"-dict={HERE / 'client.dict'}",
                 f"-artifact_prefix={artifacts}/", str(corpus), str(seeds)],
                stdout=out, stderr=subprocess.STDOUT)
        with log.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        runs += 1
        failed = proc.returncode != 0
        stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", text, re.M))
        executions += int(stats.get("number_of_executed_units", 0))
        peak_rss = max(peak_rss, int(stats.get("peak_rss_mb", 0)))
        for edges, features in re.findall(r"^#\d+\s+\w+\s+cov: (\d+) ft: (\d+)", text, re.M):
            cov, ft = max(cov, int(edges)), max(ft, int(features))
    cpu, wall = cpu_of_children() - cpu0, time.monotonic() - wall0
    crashes = sorted(p.name for p in artifacts.iterdir())
    print(f"fuzz-c: {executions} executions in {wall:.0f} s wall, {cpu:.0f} s CPU "
          f"({runs} run{'s' if runs > 1 else ''}), {executions / max(cpu, 1e-9):.0f} exec/s "
          f"of CPU")
    print(f"fuzz-c: coverage {cov} edges, {ft} features; corpus "
          f"{len(list(corpus.iterdir()))} inputs; peak RSS {peak_rss} MB")
    print(f"fuzz-c: crashes found: {len(crashes)}{' ' + ', '.join(crashes) if crashes else ''}")
    if failed:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        print(f"{tail}\nfuzz-c: the fuzzer failed; the whole log is {log}", file=sys.stderr)
    return 1 if failed or crashes else 0


if __name__ == "__main__":
    sys.exit(main())
