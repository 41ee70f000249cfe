"""Provenance: what exactly produced a report, so that it can be reproduced or doubted.

    command         the exact command line (argv), or null when run_bench was called from code
    settings_file   the --config file: path, sha256 and its full text
    runners         per role (candidate, baseline): the runner spec and its source: a
                    built-in module, a plugin file or a plugin package, with the sha256 of
                    its source (for a package: every .py file under it), and whether that
                    source is committed to git
    dirty_reasons   why the report counts as measured from a dirty tree: modified or
                    untracked files in the checkout, or a runner plugin that is not committed

A plugin's source is hashed without importing it: the harness never imports runner code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lab.runners import RUNNERS

ROOT = Path(__file__).resolve().parents[2]


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def sha256_files(files: Sequence[Path], root: Path) -> str:
    """One digest over the files' relative paths and contents, in path order."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def committed(paths: Sequence[Path]) -> bool | None:
    """True when every path is tracked by git and unchanged; None outside any repository."""
    if not paths:
        return None
    folder = paths[0].parent
    listed = _git(folder, "ls-files", "--error-unmatch", "--", *map(str, paths))
    if listed is None:
        return None
    if listed.returncode != 0:
        inside = _git(folder, "rev-parse", "--is-inside-work-tree")
        return False if inside is not None and inside.returncode == 0 else None
    status = _git(folder, "status", "--porcelain", "--", *map(str, paths))
    return status is not None and status.returncode == 0 and not status.stdout.strip()


def _source(files: list[Path], root: Path, kind: str, where: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "path": where,
        "files": len(files),
        "sha256": sha256_files(files, root) if files else None,
        "committed": committed(files),
    }


def runner_source(spec: str) -> dict[str, Any]:
    """Where a runner's code lives and its hash: a built-in, a plugin file or a package."""
    if spec in RUNNERS:
        module = RUNNERS[spec].split(":")[0]
        path = ROOT / Path(*module.split(".")).with_suffix(".py")
        return {"spec": spec, **_source([path], ROOT, "builtin", module)}
    target = spec.rpartition(":")[0] or spec
    if target.endswith(".py") or "/" in target:
        path = Path(target).resolve()
        files = [path] if path.is_file() else []
        return {"spec": spec, **_source(files, path.parent, "file", str(path))}
    top = target.split(".")[0]
    found = importlib.util.find_spec(top) if top else None  # finds, does not import
    if found is None or found.origin is None:
        return {"spec": spec, "kind": "package", "path": None, "files": 0, "sha256": None}
    origin = Path(found.origin).resolve()
    if found.submodule_search_locations:
        package = origin.parent
        files = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
        return {"spec": spec, **_source(files, package.parent, "package", str(package))}
    return {"spec": spec, **_source([origin], origin.parent, "package", str(origin))}


def checkout_changes(root: Path = ROOT) -> list[str]:
    """Modified and untracked files in the checkout, as reasons (empty when clean)."""
    status = _git(root, "status", "--porcelain")
    if status is None or status.returncode != 0:
        return []
    lines = [line for line in status.stdout.splitlines() if line.strip()]
    untracked = sum(line.startswith("??") for line in lines)
    changed = len(lines) - untracked
    reasons = []
    if changed:
        reasons.append(f"{changed} modified file(s) in the checkout")
    if untracked:
        reasons.append(f"{untracked} untracked file(s) in the checkout")
    return reasons


def settings_file(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    data = Path(path).read_bytes()
    return {
        "path": str(Path(path).resolve()),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content": data.decode("utf-8", errors="replace"),
    }


def provenance(
    runners: Mapping[str, str],
    command: Sequence[str] | None = None,
    config_path: str | None = None,
    root: Path = ROOT,
) -> dict[str, Any]:
    """The provenance block; `runners` maps a role to its runner spec."""
    sources = {role: runner_source(spec) for role, spec in runners.items()}
    reasons = checkout_changes(root)
    for role, source in sources.items():
        if source["kind"] != "builtin" and source.get("committed") is not True:
            reasons.append(f"{role} runner {source['path']} is not committed to git")
    return {
        "command": list(command) if command is not None else None,
        "settings_file": settings_file(config_path),
        "runners": sources,
        "dirty_reasons": reasons,
    }
