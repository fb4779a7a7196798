"""The cluster the e2e tests run against (tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Cluster:
    kubeconfig: str
    namespace: str
    release: str
    url: str
    timeout: float

    @property
    def fullname(self) -> str:
        return self.release if "jiomosa" in self.release else f"{self.release}-jiomosa"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
        proc = subprocess.run([kubectl, "--kubeconfig", self.kubeconfig, "-n", self.namespace,
                               *args], input=input, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    def get(self, *args: str) -> Any:
        out = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def wait(self, probe: Any, timeout: float, what: str, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = probe()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"{what} not within {timeout:.0f} s (last: {str(last)[:500]})")
