"""Pair-programming debug scenarios: plant a fault in a copy of the lab, apply the reference
fix, run the hidden checks.

An exercise folder (exercises/<name>/) holds `fault/` (files overlaid onto the copy: the
planted fault), `interviewer/solution/` (the reference fix, an overlay of files) and
`interviewer/checks/` (hidden pytest checks). The copy holds the git-tracked files the lab
needs to run (TREE_PARTS), never `exercises/`.

The hidden checks run in a child process (`python -m pytest`) with the tree as working
directory and PYTHONPATH, from a copy of the checks outside the tree: the candidate's code
runs there, never in the grader's process, and cannot edit the checks before they run.
Results come back as JUnit XML, one line per check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.grading.files import copy_files, overlay, tracked_files

# What a planted tree holds (git-tracked files under these paths).
TREE_PARTS = (
    "lab/",
    "models/",
    "tests/",
    "benchmarks/",
    "constraints/",
    "pyproject.toml",
    "Makefile",
    "README.md",
    "LICENSE",
)
NEVER = ("exercises/", ".git/", ".ci/")


@dataclass
class HiddenCheckResult:
    passed: bool
    lines: list[str] = field(default_factory=list)  # "PASS name" / "FAIL name: reason"
    returncode: int = 0
    output_tail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "lines": list(self.lines),
            "returncode": self.returncode,
        }

    def summary(self) -> str:
        return "\n".join(self.lines) or self.output_tail


def tree_files(lab_root: Path) -> list[str]:
    """The lab's files a planted tree holds: git-tracked ones under TREE_PARTS (a ConfigError
    without git, see lab.grading.files.tracked_files)."""
    return [
        n
        for n in tracked_files(Path(lab_root))
        if n.startswith(TREE_PARTS) and not n.startswith(NEVER)
    ]


def _exercise(exercise_dir: Path) -> Path:
    exercise_dir = Path(exercise_dir)
    if not (exercise_dir / "exercise.toml").is_file():
        raise ConfigError(f"{exercise_dir} is not an exercise (no exercise.toml)")
    return exercise_dir


def plant_fault(
    lab_root: Path, exercise_dir: Path, dest: Path, with_exports: bool = False
) -> list[str]:
    """A copy of the lab at `dest` (new or empty) with the exercise's fault overlaid.
    `with_exports` also copies the exported model versions (models/<name>/<version>/), so that
    checks need not export again. Returns the overlaid paths."""
    lab_root, exercise_dir, dest = Path(lab_root), _exercise(exercise_dir), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty")
    copy_files(lab_root, tree_files(lab_root), dest)
    if with_exports:
        copy_exports(lab_root, dest)
    return overlay(exercise_dir / "fault", dest)


def copy_exports(lab_root: Path, tree: Path) -> None:
    """Copy generated model versions (copies, not links: the tree runs untrusted code)."""
    for version in sorted(Path(lab_root).glob("models/*/[0-9]*")):
        target = Path(tree) / version.relative_to(lab_root)
        if version.is_dir() and not target.exists():
            shutil.copytree(version, target, ignore=shutil.ignore_patterns(".lock", "*.tmp*"))


def apply_fix(exercise_dir: Path, tree: Path) -> list[str]:
    """Overlay the reference solution (interviewer/solution/) onto a planted tree. A file
    `RESTORE` there lists lab paths (one a line, # comments) restored from the lab that holds
    the catalogue (exercises/<name>/../..) instead of being copied into the solution: where
    the lab's own code is the reference fix, a copy would go stale."""
    exercise_dir = _exercise(exercise_dir)
    solution = exercise_dir / "interviewer" / "solution"
    if not solution.is_dir():
        raise ConfigError(f"exercise {exercise_dir.name} has no interviewer/solution/")
    tree = Path(tree)
    restore = solution / "RESTORE"
    written = []
    if restore.is_file():
        lab_root = exercise_dir.resolve().parents[1]
        for line in restore.read_text().splitlines():
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            source = lab_root / name
            if ".." in Path(name).parts or not source.is_file():
                raise ConfigError(f"{restore}: cannot restore {name!r} from {lab_root}")
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
            written.append(name)
    with tempfile.TemporaryDirectory(prefix="servelab-solution-") as tmp:
        files = Path(tmp) / "solution"
        shutil.copytree(solution, files, ignore=shutil.ignore_patterns("RESTORE", "__pycache__"))
        return written + overlay(files, tree)


def _junit_lines(xml_path: Path) -> list[tuple[bool, str]]:
    results = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = case.get("name", "?")
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            results.append((False, f"FAIL {name}: {message[0][:300] if message else 'failed'}"))
        elif skipped is not None:
            results.append((False, f"FAIL {name}: skipped ({skipped.get('message', '')})"))
        else:
            results.append((True, f"PASS {name}"))
    return results


def run_hidden_checks(
    exercise_dir: Path, tree: Path, timeout_s: float = 600.0, exports_from: Path | None = None
) -> HiddenCheckResult:
    """Run interviewer/checks/ against `tree` in a child process. A skipped check counts as
    failed (a check that cannot run proves nothing). `exports_from`: a lab root whose
    exported models are copied into the tree first when it has none."""
    exercise_dir, tree = _exercise(exercise_dir), Path(tree).resolve()
    checks = exercise_dir / "interviewer" / "checks"
    if not checks.is_dir() or not list(checks.glob("test_*.py")):
        raise ConfigError(f"exercise {exercise_dir.name} has no hidden checks")
    if not (tree / "lab").is_dir():
        raise ConfigError(f"{tree} is not a lab tree (no lab/ folder)")
    if exports_from is not None:
        copy_exports(Path(exports_from), tree)
    with tempfile.TemporaryDirectory(prefix="servelab-checks-") as tmp:
        work = Path(tmp)
        shutil.copytree(checks, work / "checks", ignore=shutil.ignore_patterns("__pycache__"))
        (work / "pytest.ini").write_text("[pytest]\naddopts =\n")
        xml_path = work / "junit.xml"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVELAB_")}
        env.update(PYTHONPATH=str(tree), SERVELAB_CHECK_TREE=str(tree), PYTHONDONTWRITEBYTECODE="1")
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(work / "pytest.ini"),
            "--rootdir",
            str(work),
            f"--junitxml={xml_path}",
            str(work / "checks"),
        ]
        try:
            done = subprocess.run(
                command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return HiddenCheckResult(
                False, [f"FAIL hidden checks: timed out after {timeout_s:g} s"], -1
            )
        tail = (done.stdout + done.stderr)[-4000:]
        if not xml_path.is_file():
            return HiddenCheckResult(
                False,
                [f"FAIL hidden checks: pytest did not run (exit {done.returncode})"],
                done.returncode,
                tail,
            )
        results = _junit_lines(xml_path)
    passed = done.returncode == 0 and bool(results) and all(ok for ok, _ in results)
    return HiddenCheckResult(passed, [line for _, line in results], done.returncode, tail)
