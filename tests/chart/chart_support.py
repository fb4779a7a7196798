"""Test support for the Helm chart (charts/jiomosa): the helm binary, rendering, and the
rendered manifests as Python objects."""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "jiomosa"
FETCH = ROOT / "tools" / "chart" / "fetch.sh"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "jio"
_counter = itertools.count(1)


def fetch(tool: str) -> Path:
    """A tool from tools/chart/fetch.sh (helm, hadolint, gateway-api), cached outside the repo."""
    proc = subprocess.run(["bash", str(FETCH), tool], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=600,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{FETCH} {tool} failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@functools.cache
def helm_bin() -> Path:
    return fetch("helm")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm_bin()), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def template_args(namespace: str, values: Iterable[Path] = (), sets: Sequence[str] = (),
                  release: str = RELEASE) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


def render(namespace: str = "jiomosa", values: Iterable[Path] = (), sets: Sequence[str] = (),
           release: str = RELEASE, include_crds: bool = False) -> str:
    """`helm template` output (YAML text)."""
    args = template_args(namespace, values, sets, release)
    if include_crds:
        args.append("--include-crds")
    return helm(*args).stdout


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(manifests: list[dict[str, Any]], kind: str, name: str | None = None,
         namespace: str | None = None) -> list[dict[str, Any]]:
    return [d for d in manifests if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


def one(manifests: list[dict[str, Any]], kind: str, name: str | None = None,
        namespace: str | None = None) -> dict[str, Any]:
    found = find(manifests, kind, name, namespace)
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}: " + ", ".join(
        d["metadata"]["name"] for d in find(manifests, kind))
    return found[0]


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The plain `value` env entries of a Deployment's first container."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def resolved_env(deployment: dict[str, Any], manifests: list[dict[str, Any]]) -> dict[str, str]:
    """A Deployment's first container's env as its process gets it: plain values, and
    ``secretKeyRef`` values read from the Secrets the chart renders (as the kubelet would)."""
    import base64

    env = container_env(deployment)
    namespace = deployment["metadata"].get("namespace")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for entry in container.get("env", []):
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            continue
        for secret in find(manifests, "Secret", ref["name"], namespace):
            if ref["key"] in (secret.get("data") or {}):
                env[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


def is_hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


def dump(manifests: Iterable[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(manifests), sort_keys=False)


class ChartCluster:
    """Admin access to a control plane that has the chart's CRDs."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def kubectl(self, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cp.run_kubectl(*args, input=input, check=check)

    def namespace(self, prefix: str, restricted: bool = True) -> str:
        """A fresh namespace (never deleted: no controller-manager), Pod Security `restricted`
        enforced when asked."""
        name = f"{prefix}-{next(_counter)}"[:63]
        self.cp.ensure_namespace(name)
        if restricted:
            self.kubectl("label", "namespace", name, "--overwrite",
                         "pod-security.kubernetes.io/enforce=restricted",
                         "pod-security.kubernetes.io/enforce-version=latest",
                         "pod-security.kubernetes.io/warn=restricted",
                         "pod-security.kubernetes.io/warn-version=latest")
        return name
