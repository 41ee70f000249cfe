"""`servelab exercise pack NAME --out DIR`: the candidate's bundle.

    DIR/
      BRIEF.md       the exercise's brief.md
      SUBMIT.md      how to hand in (written here, per scoring method)
      PACK.json      what was packed: exercise, lab commit, public seed, every file's sha256
      submission/    the exercise's starter/ (the candidate edits it and hands it in)
      servelab/      the lab: the git-tracked files of this checkout, minus the whole
                     exercises/ catalogue and the tests and plugins that read interviewer
                     material; a pair-debug exercise's fault/ is overlaid onto it

Nothing under any exercise's interviewer/ folder is ever copied, and the secret seed lives
only in the grader's environment, never in a file. tests/test_exercises.py walks a bundle
to prove both.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.grading.catalogue import ROOT, Exercise
from lab.grading.files import copy_files, overlay, tracked_files

# Tracked files that never go into a bundle: the catalogue (its public parts are placed
# separately) and what reads interviewer material (grading tests, calibration plugins).
EXCLUDED_PREFIXES = ("exercises/",)
EXCLUDED_FILES = frozenset(
    {
        "tests/test_grading.py",
        "tests/test_exercises.py",
        "tests/test_debug_scenarios.py",
        "tests/plugins/honest_slow.py",
    }
)


def packed_lab_files(root: Path = ROOT) -> list[str]:
    return [
        p
        for p in tracked_files(root)
        if not p.startswith(EXCLUDED_PREFIXES)
        and p not in EXCLUDED_FILES
        and "/interviewer/" not in f"/{p}"
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def submit_text(exercise: Exercise) -> str:
    """SUBMIT.md: what to hand in and how, per scoring method."""
    head = [f"# How to submit: {exercise.title}", ""]
    if exercise.method == "speed":
        runner = exercise.scoring.get("submission_runner", "runner.py:CandidateRunner")
        body = [
            "Hand in the folder `submission/` (zip or tar it) with:",
            "",
            f"- `{runner.split(':')[0]}`: your runner plugin (class `{runner.split(':')[1]}`);",
            "  to use another file or class, or constructor options, add `submission.toml`:",
            "",
            '      runner = "my_runner.py:FastRunner"',
            "      [runner_options]",
            "      threads = 1",
            "",
            "- `NOTES.md`: trade-offs made and rejected, what you would monitor in production.",
            "- `report/`: your own bench report(s), JSON and Markdown.",
            "",
            "Before you send it, check it the way the grader will (the grader uses a secret seed",
            "and its own machine; the score is a ratio against the starter, so it carries over):",
            "",
            "    cd servelab && make bench",
            f"    servelab verify --model {exercise.scoring.get('model', 'encoder')} "
            f"--runner ../submission/{runner}",
            "",
            "Your plugin runs in a separate worker process under the harness: implement the",
            'runner hooks only (README, "The runner contract"). Any failed check scores 0.',
        ]
    elif exercise.method == "files":
        names = [c["path"] for c in exercise.scoring["check"]]
        body = [
            "Hand in one folder (zip or tar it) with these files at its top level:",
            "",
            *[f"- `{n}`" for n in dict.fromkeys(names)],
            "",
            "A short automatic checklist runs over them; the interviewer reads them with you.",
        ]
    else:
        body = [
            "Hand in your copy of `servelab/` with your fix (zip or tar it, or `git diff` it",
            "against the copy you received), and `NOTES.md`: how you found the fault, what you",
            "would monitor so it cannot come back silently. Hidden checks run on your copy.",
        ]
    return "\n".join([*head, *body, ""])


def pack(exercise: Exercise, out: Path | str, root: Path = ROOT) -> dict[str, Any]:
    """Write the candidate bundle for `exercise` into `out` (new or empty); returns the
    manifest written to PACK.json."""
    exercise.require_available()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder: nothing written")
    lab_files = packed_lab_files(root)
    out.mkdir(parents=True, exist_ok=True)
    lab_dir = out / "servelab"
    copy_files(root, lab_files, lab_dir)
    overlay(exercise.fault_dir, lab_dir)  # the planted fault: the candidate's copy of the lab
    submission = out / "submission"
    submission.mkdir()
    overlay(exercise.starter_dir, submission)
    (out / "BRIEF.md").write_text(exercise.brief())
    (out / "SUBMIT.md").write_text(submit_text(exercise))
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    public_seed = _public_seed(exercise, root)
    files = {
        str(p.relative_to(out)): sha256(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "PACK.json"
    }
    manifest = {
        "schema_version": "1.0",
        "kind": "servelab-pack",
        "exercise": exercise.name,
        "title": exercise.title,
        "lab_commit": commit or None,
        "public_seed": public_seed,
        "files": files,
    }
    (out / "PACK.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _public_seed(exercise: Exercise, root: Path) -> int | None:
    model = exercise.scoring.get("model")
    if not model:
        return None
    from lab.repository import ModelRepository

    return int(ModelRepository(root / "models").handle(str(model)).config.public_seed)
