"""Copying the lab's files: the git-tracked listing and the copy that `pack` (the candidate's
bundle) and `debug.plant_fault` (a planted tree) share."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from lab.errors import ConfigError

# Never copied out of an overlay (a fault, a starter, a solution): caches and tool state.
SKIP_DIRS = frozenset(
    {"__pycache__", ".venv", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)


def tracked_files(root: Path) -> list[str]:
    """The checkout's git-tracked files that exist in the working tree (relative, sorted).
    Without git (no git program, or `root` is not a checkout) a ConfigError: a plain walk would
    copy ignored files (exports, caches, secrets in untracked files)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"copying the lab needs its git checkout at {root}: {exc}") from None
    return sorted(p for p in listed.split("\0") if p and (Path(root) / p).is_file())


def copy_files(source: Path, names: Iterable[str], dest: Path) -> list[str]:
    """Copy each relative path in `names` from `source` to `dest` (replacing, with its mode);
    returns the names."""
    written = []
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)
        written.append(name)
    return written


def overlay(source: Path, dest: Path) -> list[str]:
    """Copy every file under `source` onto `dest` (replacing), caches left out; returns the
    relative paths. A missing `source` copies nothing."""
    if not source.is_dir():
        return []
    names = [
        path.relative_to(source).as_posix()
        for path in sorted(source.rglob("*"))
        if path.is_file() and not SKIP_DIRS.intersection(path.relative_to(source).parts)
    ]
    return copy_files(source, names, dest)
