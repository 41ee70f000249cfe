"""The exercise catalogue and the candidate pack: every exercise.toml validates, a bad one is
one clear line, and a packed bundle holds no interviewer-only file and no secret."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.grading.catalogue import load_catalogue, load_exercise
from lab.grading.grade import Submission, grade_files
from lab.grading.pack import pack

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"
SECRET = "771593318264450173"  # long and distinctive: it cannot turn up by chance


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=300,
    )


def test_catalogue_has_the_take_homes_and_validates() -> None:
    catalogue = load_catalogue(EXERCISES)
    assert {"optimise-encoder", "scale-ranker", "ship-it"} <= set(catalogue)
    encoder = catalogue["optimise-encoder"]
    assert (encoder.role, encoder.kind, encoder.method) == ("ML Engineer", "take-home", "speed")
    assert catalogue["ship-it"].role == "MLOps Engineer"
    assert not catalogue["scale-ranker"].available
    for exercise in catalogue.values():
        assert len(exercise.rubric) >= 5
        assert all(len(d["levels"]) >= 2 for d in exercise.rubric.values())


def _copy(tmp_path: Path, name: str = "ship-it") -> Path:
    folder = tmp_path / name
    shutil.copytree(EXERCISES / name, folder)
    return folder


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('role = "MLOps Engineer"', 'role = "Wizard"', "role must be one of"),
        ('kind = "take-home"', 'kind = "quiz"', "kind must be one of"),
        ("[rubric.communication]", "[rubric.chattiness]", "lacks the dimension(s) communication"),
        ('method = "files"', 'method = "vibes"', "method must be one of"),
        ('name = "ship-it"', 'name = "ship-that"', "differs from its folder"),
        ('time_box = "4-6 h"', "time_box = 5", "time_box must be a non-empty string"),
        ('1 = "No runbook to speak of."', '7 = "?"', "anchored levels 1, 2"),
        ('path = "RUNBOOK.md"', 'where = "RUNBOOK.md"', "path must be a non-empty string"),
    ],
)
def test_bad_exercise_toml_is_one_clear_error(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    folder = _copy(tmp_path)
    toml = folder / "exercise.toml"
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_exercise(folder)
    assert str(toml) in str(info.value) and "\n" not in str(info.value)


def test_broken_toml_and_missing_brief_are_clear(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "brief.md").unlink()
    with pytest.raises(ConfigError, match="no brief.md"):
        load_exercise(folder)
    (folder / "exercise.toml").write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_exercise(folder)


def test_speed_profile_with_a_bad_bench_setting_is_refused(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "optimise-encoder")
    toml = folder / "exercise.toml"
    toml.write_text(toml.read_text().replace("duration_s = 4.5", "duration_seconds = 4.5"))
    with pytest.raises(ConfigError, match="unknown setting"):
        load_exercise(folder)


def _digests(folder: Path) -> dict[str, Path]:
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in folder.rglob("*") if p.is_file()}


def test_pack_holds_no_interviewer_file_and_no_secret(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    done = run_cli("exercise", "pack", "optimise-encoder", "--out", str(out), env={
        "SERVELAB_SECRET_SEED": SECRET})  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    relative = [str(p.relative_to(out)) for p in files]
    # What the candidate needs is there.
    for needed in ("BRIEF.md", "SUBMIT.md", "PACK.json", "submission/runner.py"):
        assert needed in relative
    assert "servelab/lab/runners/base.py" in relative and "servelab/Makefile" in relative
    assert json.loads((out / "PACK.json").read_text())["public_seed"] == 2026
    # No path under any interviewer/ folder, and no exercises/ catalogue at all.
    assert not [
        r for r in relative if "interviewer" in Path(r).parts or r.startswith("servelab/exercises")
    ]
    # No file whose content equals any interviewer file of any exercise.
    hidden = {
        digest: path
        for digest, path in _digests(EXERCISES).items()
        if "interviewer" in path.relative_to(EXERCISES).parts
    }
    assert hidden, "the catalogue has interviewer material to leak"
    leaked = [str(p) for d, p in _digests(out).items() if d in hidden]
    assert not leaked
    # No secret: neither the value nor anything that reads interviewer material.
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert "servelab/tests/plugins/honest_slow.py" not in relative


def test_pack_guard_would_catch_a_leak(tmp_path: Path) -> None:
    """The check above can fail: a bundle with a copied solution is caught by its hash."""
    folder = tmp_path / "catalogue"
    shutil.copytree(EXERCISES, folder)
    solution = folder / "optimise-encoder/interviewer/solution/runner.py"
    (folder / "optimise-encoder/starter/runner.py").write_bytes(solution.read_bytes())
    out = tmp_path / "bundle"
    pack(load_exercise(folder / "optimise-encoder"), out)
    hidden = {d for d, p in _digests(folder).items() if "interviewer" in p.parts}
    assert any(d in hidden for d in _digests(out))


def test_pack_refuses_unavailable_and_non_empty(tmp_path: Path) -> None:
    done = run_cli("exercise", "pack", "scale-ranker", "--out", str(tmp_path / "x"))
    assert done.returncode == 2
    assert "servelab: error: exercise scale-ranker is not available" in done.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    done = run_cli("exercise", "pack", "ship-it", "--out", str(tmp_path / "full"))
    assert done.returncode == 2 and "not an empty folder" in done.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_exercise_list_and_show() -> None:
    listed = run_cli("exercise", "list")
    assert listed.returncode == 0
    assert "optimise-encoder" in listed.stdout and "ship-it" in listed.stdout
    shown = run_cli("exercise", "show", "optimise-encoder")
    assert shown.returncode == 0 and "Trade-off opinions" in shown.stdout
    missing = run_cli("exercise", "show", "nope")
    assert missing.returncode == 2 and "no exercise 'nope'" in missing.stderr


def test_ship_it_file_checks_pass_on_the_reference_and_fail_on_the_starter(
    tmp_path: Path,
) -> None:
    exercise = load_exercise(EXERCISES / "ship-it")
    reference = grade_files(exercise, Submission("ref", EXERCISES / "ship-it/interviewer/solution"))
    assert reference["score"]["value"] == 1.0
    starter = grade_files(exercise, Submission("starter", EXERCISES / "ship-it/starter"))
    assert starter["score"]["value"] == 0.0
    assert all(c["problems"] for c in starter["checks"])
    # A made-up metric name is caught even when every word is there.
    shutil.copytree(EXERCISES / "ship-it/interviewer/solution", tmp_path / "s")
    alerts = tmp_path / "s" / "alerts.yml"
    alerts.write_text(alerts.read_text() + "\n# expr: nv_inference_made_up_total > 1\n")
    graded = grade_files(exercise, Submission("s", tmp_path / "s"))
    failed = [c for c in graded["checks"] if not c["passed"]]
    assert len(failed) == 1 and "nv_inference_made_up_total" in failed[0]["problems"][0]
