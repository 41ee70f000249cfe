"""The pair-debugging scenarios: each one's hidden checks fail on the tree as shipped (the
fault planted in a copy of the lab) and pass once the reference fix is applied. The checks
run in a child process with the planted tree as working directory (lab.grading.debug)."""

from __future__ import annotations

import concurrent.futures
import sys
from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.grading.catalogue import load_exercise
from lab.grading.debug import apply_fix, plant_fault, run_hidden_checks, tree_files
from lab.grading.files import tracked_files
from lab.grading.pack import pack
from lab.repository import ModelHandle

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"

# For each scenario: checks that must fail as shipped (a substring of each FAIL line).
SCENARIOS = {
    "train-serve-skew": [
        "FAIL test_long_requests_alone_match_the_reference",
        "FAIL test_a_padded_batch_matches_the_reference_row_by_row",
        "FAIL test_merged_batches_of_mixed_lengths_match_the_reference",
    ],
    "late-events": [
        "FAIL test_features_match_offline_with_late_events",
        "FAIL test_an_event_arriving_after_its_window_closed_is_never_counted",
    ],
    "drift": [
        "FAIL test_psi_matches_a_hand_computed_value",
        "FAIL test_reference_like_traffic_keeps_every_psi_low",
        "FAIL test_shifted_traffic_alerts_and_the_fallback_takes_over",
    ],
    "degraded-model": [
        "FAIL test_the_degraded_int8_build_is_detected_and_the_fallback_serves",
        "FAIL test_a_different_degradation_is_detected_too",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_hidden_checks_fail_as_shipped_and_pass_with_the_reference_fix(
    name: str, tmp_path: Path, encoder_small: ModelHandle, ranker_small: ModelHandle
) -> None:
    exercise = EXERCISES / name
    shipped_tree, fixed_tree = tmp_path / "shipped", tmp_path / "fixed"
    planted = plant_fault(ROOT, exercise, shipped_tree, with_exports=True)
    assert planted and all((shipped_tree / p).is_file() for p in planted)
    plant_fault(ROOT, exercise, fixed_tree, with_exports=True)
    assert apply_fix(exercise, fixed_tree)

    # The two runs are independent child processes: run them side by side.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        shipped_run = pool.submit(run_hidden_checks, exercise, shipped_tree)
        fixed_run = pool.submit(run_hidden_checks, exercise, fixed_tree)
        shipped, fixed = shipped_run.result(), fixed_run.result()

    assert not shipped.passed, shipped.summary()
    for expected in SCENARIOS[name]:
        assert any(line.startswith(expected) for line in shipped.lines), shipped.summary()
    assert fixed.passed, fixed.summary() + "\n" + fixed.output_tail
    assert len(fixed.lines) == len(shipped.lines)  # the same checks, all passing now
    assert all(line.startswith("PASS ") for line in fixed.lines)


def test_the_drift_fix_restores_the_labs_own_monitor(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    plant_fault(ROOT, EXERCISES / "drift", tree)
    monitor = (ROOT / "lab" / "serve" / "drift.py").read_text()
    assert (tree / "lab" / "serve" / "drift.py").read_text() != monitor  # the stub
    assert apply_fix(EXERCISES / "drift", tree) == ["lab/serve/drift.py"]
    assert (tree / "lab" / "serve" / "drift.py").read_text() == monitor
    assert not (tree / "RESTORE").exists()


def test_every_scenario_has_the_catalogue_layout() -> None:
    for name in SCENARIOS:
        folder = EXERCISES / name
        meta = tomllib.loads((folder / "exercise.toml").read_text())
        assert meta["name"] == name and meta["kind"] == "pair-debug"
        assert meta["time_box"] == "60-90 min" and meta["available"] is True
        assert meta["role"] in ("ML Engineer", "MLOps Engineer")
        assert {"production_exposure", "debugging_approach", "data_quality_instincts"} <= set(
            meta["rubric"]
        )
        assert {"trade_off_opinions", "communication"} <= set(meta["rubric"])
        assert meta["scoring"]["checks"]
        for part in ("brief.md", "fault", "interviewer/notes.md", "interviewer/solution"):
            assert (folder / part).exists(), f"{name}: no {part}"
        assert list((folder / "interviewer" / "checks").glob("test_*.py"))


def test_a_planted_tree_holds_the_lab_and_no_exercise(tmp_path: Path) -> None:
    names = tree_files(ROOT)
    assert "lab/serve/core.py" in names and "models/ranker/model.py" in names
    assert not [n for n in names if n.startswith(("exercises/", ".git/"))]
    tree = tmp_path / "tree"
    plant_fault(ROOT, EXERCISES / "late-events", tree)
    assert not (tree / "exercises").exists()
    assert (tree / "serving" / "features.py").is_file() and (tree / "pyproject.toml").is_file()
    assert not list(tree.rglob("*.onnx"))  # exports only when asked
    with pytest.raises(ConfigError, match="is not empty"):
        plant_fault(ROOT, EXERCISES / "late-events", tree)


def test_copying_a_lab_without_git_is_one_config_error_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pack and plant_fault share one listing (git ls-files): no walk fallback, which would
    copy ignored files (exports, caches) into a bundle or a planted tree."""
    lab = tmp_path / "lab"
    (lab / "lab").mkdir(parents=True)
    (lab / "lab" / "core.py").write_text("x = 1\n")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no checkout above tmp_path
    with pytest.raises(ConfigError, match="needs its git checkout at"):
        tracked_files(lab)
    with pytest.raises(ConfigError, match="needs its git checkout at"):
        plant_fault(lab, EXERCISES / "late-events", tmp_path / "tree")
    with pytest.raises(ConfigError, match="needs its git checkout at"):
        pack(load_exercise(EXERCISES / "late-events"), tmp_path / "bundle", root=lab)
    assert not (tmp_path / "tree").exists() and not (tmp_path / "bundle").exists()
    monkeypatch.setenv("PATH", str(tmp_path))  # no git program at all
    with pytest.raises(ConfigError, match="needs its git checkout at"):
        tracked_files(ROOT)


def test_hidden_checks_refuse_what_is_not_a_tree_or_an_exercise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a lab tree"):
        run_hidden_checks(EXERCISES / "late-events", tmp_path)
    with pytest.raises(ConfigError, match="not an exercise"):
        run_hidden_checks(tmp_path, ROOT)
