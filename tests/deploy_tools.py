"""Shared by tests/test_k8s.py and tests/test_docker.py: the deployment tools and what they make.

The tools live in their own virtual environment, .venv-deploy (`make deploy-tools`, pinned by
constraints/deploy.txt), so that checkov's dependencies never touch the project's .venv.
`make test` creates it. A plain `pytest` run without it fails with the command to run;
SERVELAB_SKIP_DEPLOY_TOOLS=1 turns those failures into skips (for a machine that cannot
install them); SERVELAB_DEPLOY_TOOLS=/some/bin uses tools installed elsewhere.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "multi-gpu", "loadtest")
# Every rendered object is validated against the oldest Kubernetes these manifests support
# (the preStop `sleep` action is on by default from 1.30) and the newest schema we ship.
K8S_VERSIONS = ("1.30.0", "1.37.0")
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
INSTALL_HINT = "run `make deploy-tools` (creates .venv-deploy from constraints/deploy.txt)"


def tool(name: str) -> Path:
    """The path of a deployment tool, or a failure that says how to install it."""
    folder = Path(os.environ.get("SERVELAB_DEPLOY_TOOLS") or ROOT / ".venv-deploy" / "bin")
    path = folder / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    message = f"{name} is not installed in {folder}: {INSTALL_HINT}"
    if os.environ.get("SERVELAB_SKIP_DEPLOY_TOOLS") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def run_tool(
    name: str, *args: str, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    cmd = [str(tool(name)), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(
            f"{shlex.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return result


@dataclass(frozen=True)
class Rendered:
    """One overlay as `kubectl kustomize` renders it."""

    name: str
    text: str
    objects: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        raise AssertionError(f"{self.name}: no {kind} named {name}")

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "Job", "StatefulSet")]


def render_dir(path: Path, label: str) -> Rendered:
    text = run_tool("kubectl", "kustomize", str(path)).stdout
    objects = tuple(o for o in yaml.safe_load_all(text) if o)
    return Rendered(label, text, objects)


@cache
def render(overlay: str) -> Rendered:
    return render_dir(K8S / "overlays" / overlay, overlay)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, container) for the init containers and containers of a workload's pods."""
    spec = pod_spec(workload)
    found = [("init", c) for c in spec.get("initContainers", [])]
    return found + [("main", c) for c in spec["containers"]]


def expand_env(args: list[str], container: dict[str, Any]) -> list[str]:
    """Kubernetes' $(VAR) expansion in args, with what the container's env defines.

    A value taken from the downward API (fieldRef) is not known before the pod runs: it
    becomes "0", a valid rank or index."""
    values: dict[str, str] = {}
    for env in container.get("env", []):
        values[env["name"]] = str(env["value"]) if "value" in env else "0"
    return [
        re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m[1], m[0]), a) for a in args
    ]


@cache
def checkov_results() -> dict[str, Any]:
    """One checkov run over every rendered overlay, the Dockerfiles, and a control file that
    must fail (so a scanner that silently checks nothing is noticed). Offline: no download
    of guidelines or policies (--skip-download)."""
    folder = Path(tempfile.mkdtemp(prefix="servelab-checkov-"))
    atexit.register(shutil.rmtree, folder, True)
    files = []
    for overlay in OVERLAYS:
        path = folder / f"{overlay}.yaml"
        path.write_text(render(overlay).text)
        files.append(path)
    control = folder / "control.yaml"
    control.write_text(CHECKOV_CONTROL)
    files.append(control)
    args = ["--framework", "kubernetes", "dockerfile", "--skip-download", "--compact", "-o", "json"]
    for path in [*files, *(ROOT / d for d in DOCKERFILES)]:
        args += ["-f", str(path)]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "ANSI_COLORS_DISABLED": "1"}
    result = run_tool("checkov", *args, check=False, env=env, cwd=folder)
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {result.returncode}):\n{result.stderr[-3000:]}")
    if isinstance(reports, dict):
        reports = [reports]
    merged: dict[str, list[dict[str, Any]]] = {
        "passed_checks": [],
        "failed_checks": [],
        "skipped_checks": [],
        "parsing_errors": [],
    }
    for report in reports:
        for key in merged:
            for item in report["results"].get(key, []):
                if isinstance(item, dict):
                    item["check_type"] = report["check_type"]
                merged[key].append(item)
    return {"results": merged, "folder": str(folder)}


# A pod that breaks the rules the real manifests keep: checkov must flag it.
CHECKOV_CONTROL = """\
apiVersion: v1
kind: Pod
metadata:
  name: control
  namespace: servelab
spec:
  containers:
    - name: control
      image: servelab:latest
      securityContext:
        privileged: true
"""
