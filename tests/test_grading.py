"""Grading optimise-encoder on its CPU variant: one real grade run (CLI, secret seed, every
runner in a worker process) of the reference, the starter, an honest but slower plugin and
three cheats; the score's arithmetic; the grade report; the candidate view of compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.errors import ConfigError
from lab.grading.candidates import ranked
from lab.grading.catalogue import load_exercise
from lab.grading.grade import gate_reasons, load_submission, normalised

ROOT = Path(__file__).resolve().parent.parent
EXERCISE = ROOT / "exercises/optimise-encoder"
PLUGINS = ROOT / "tests/plugins"
SECRET = "604218837712954133"


# ----- arithmetic ------------------------------------------------------------------------
def test_score_is_zero_at_the_baseline_and_one_at_the_reference() -> None:
    reference = {"ratio": 3.0, "ci": [2.5, 3.5]}
    assert normalised({"ratio": 3.0, "ci": [2.5, 3.5]}, reference)["value"] == pytest.approx(1.0)
    assert normalised({"ratio": 1.0, "ci": [0.9, 1.1]}, reference)["value"] == pytest.approx(0.0)
    half = normalised({"ratio": 2.0, "ci": [1.8, 2.2]}, reference)
    assert half["value"] == pytest.approx(0.5)
    low, high = half["ci"]  # corners: (1.8-1)/(3.5-1) and (2.2-1)/(2.5-1)
    assert low == pytest.approx(0.32) and high == pytest.approx(0.8)
    # An interval for the reference that reaches 1 gives no interval for the score.
    assert (
        normalised({"ratio": 2.0, "ci": [1.8, 2.2]}, {"ratio": 1.5, "ci": [0.9, 2.0]})["ci"] is None
    )


def test_submission_folder_reads_submission_toml_and_notes(tmp_path: Path) -> None:
    exercise = load_exercise(EXERCISE)
    (tmp_path / "fast.py").write_text("# plugin\n")
    (tmp_path / "NOTES.md").write_text("I trimmed padding.\n")
    (tmp_path / "submission.toml").write_text(
        'runner = "fast.py:Fast"\n[runner_options]\nthreads = 2\n'
    )
    sub = load_submission(str(tmp_path), exercise)
    assert sub.runner == f"{tmp_path / 'fast.py'}:Fast"
    assert sub.runner_options == {"threads": 2} and sub.notes == "I trimmed padding.\n"
    (tmp_path / "submission.toml").write_text('runner = "../outside.py:X"\n')
    with pytest.raises(ConfigError, match="no runner file"):
        load_submission(str(tmp_path), exercise)
    with pytest.raises(ConfigError, match="no submission at"):
        load_submission(str(tmp_path / "missing"), exercise)


# ----- one real grade run ----------------------------------------------------------------
SUBMISSIONS = {
    "reference": f"{EXERCISE}/interviewer/solution/runner.py",
    "starter": f"{EXERCISE}/starter/runner.py",
    "honest_slow": f"{PLUGINS}/honest_slow.py:HonestSlowRunner",
    "result_cache": f"{PLUGINS}/result_cache.py:ResultCacheRunner",
    "batch1_only": f"{PLUGINS}/batch1_only.py:Batch1OnlyRunner",
    "zeros": f"{PLUGINS}/zeros.py:ZerosRunner",
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every submission graded in ONE `servelab grade` run, profile ci, secret seed set."""
    out = tmp_path_factory.mktemp("grades")
    folders = {}
    for name, spec in SUBMISSIONS.items():  # folders named as the test refers to them
        folder = out / "in" / name
        folder.mkdir(parents=True)
        file, _, cls = spec.rpartition(":") if ".py:" in spec else (spec, "", "CandidateRunner")
        (folder / "submission.toml").write_text(f'runner = "plugin.py:{cls}"\n')
        (folder / "plugin.py").write_text(
            f"import sys, importlib.util\nsys.path.insert(0, {str(PLUGINS)!r})\n"
            f"_s = importlib.util.spec_from_file_location('graded_{name}', {file!r})\n"
            "_m = importlib.util.module_from_spec(_s); _s.loader.exec_module(_m)\n"
            f"{cls} = _m.{cls}\n"
        )
        (folder / "NOTES.md").write_text(f"notes of {name}: I would monitor p99 and queue time.\n")
        folders[name] = folder
    done = subprocess.run(
        [sys.executable, "-m", "lab", "grade", *map(str, folders.values()),
         "--exercise", "optimise-encoder", "--profile", "ci", "--output", str(out / "grades"),
         "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SERVELAB_SECRET_SEED": SECRET},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    reports = {}
    for path in (out / "grades").glob("*.grade.json"):
        report = json.loads(path.read_text())
        reports[report["submission"]["name"]] = report
    assert set(reports) == set(SUBMISSIONS), done.stdout
    return {"reports": reports, "stdout": done.stdout, "folder": out / "grades"}


@pytest.mark.slow
def test_reference_grades_near_one_and_the_starter_near_zero(graded: dict[str, Any]) -> None:
    reports = graded["reports"]
    reference, starter = reports["reference"], reports["starter"]
    assert reference["verdict"] == "SCORED", reference["score"]
    assert starter["verdict"] == "SCORED", starter["score"]
    # Raw measurements, not clamped: the reference leg's speed-up is well above 1.
    assert reference["automatic"]["reference_leg"]["speedup"]["faster"]
    # Bounds for a shared 2-core machine under 4x oversubscription (measured there: reference
    # 0.71 and 0.40, starter 0.15 and 0.14 in two runs); a quiet machine lands much closer.
    assert 0.3 <= reference["score"]["value"] <= 2.0, reference["automatic"]
    assert -0.5 <= starter["score"]["value"] <= 0.5, starter["automatic"]
    assert reference["score"]["value"] > starter["score"]["value"]


@pytest.mark.slow
def test_an_honest_slower_plugin_lands_between(graded: dict[str, Any]) -> None:
    reports = graded["reports"]
    slow = reports["honest_slow"]
    assert slow["verdict"] == "SCORED", slow["score"]
    assert 0.0 < slow["score"]["value"] < reports["reference"]["score"]["value"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("result_cache", "replay check"),
        ("batch1_only", "verify failed: reference set, padded batches"),
        ("zeros", "verify failed"),
    ],
)
def test_cheats_get_zero_with_their_reason(graded: dict[str, Any], name: str, reason: str) -> None:
    report = graded["reports"][name]
    assert report["verdict"] == "ZERO"
    assert report["score"] == {
        "value": 0.0,
        "ci": None,
        "zeroed": True,
        "reason": report["score"]["reason"],
    }
    assert reason in report["score"]["reason"]


@pytest.mark.slow
def test_grade_report_has_rubric_notes_and_isolation(graded: dict[str, Any]) -> None:
    report = graded["reports"]["honest_slow"]
    assert report["schema_version"].startswith("1.") and report["secret_seed"] is True
    assert SECRET not in json.dumps(report)
    dimensions = [r["dimension"] for r in report["rubric"]]
    assert dimensions[:5] == [
        "production_exposure", "debugging_approach", "data_quality_instincts",
        "trade_off_opinions", "communication",
    ]  # fmt: skip
    assert all(r["level"] is None and len(r["levels"]) == 4 for r in report["rubric"])
    assert "I would monitor p99" in report["notes_md"]
    leg = json.loads(Path(report["automatic"]["candidate_leg"]["report"]).read_text())
    assert leg["isolation"]["mode"] == "process"
    assert leg["model"]["seed_source"] == "public+secret"
    markdown = next(graded["folder"].glob("*honest_slow.grade.md")).read_text()
    assert "> notes of honest_slow" in markdown and "### Trade-off opinions" in markdown


@pytest.mark.slow
def test_compare_ranks_candidates_by_score(graded: dict[str, Any], tmp_path: Path) -> None:
    paths = sorted(str(p) for p in graded["folder"].glob("*.grade.json"))
    page = tmp_path / "candidates.html"
    done = subprocess.run(
        [sys.executable, "-m", "lab", "compare", *paths, "--html", str(page)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [
        line for line in done.stdout.splitlines() if line.startswith("| ") and "rank" not in line
    ]
    names = [row.split("|")[2].strip() for row in rows]
    verdicts = [row.split("|")[3].strip() for row in rows]
    assert names.index("reference") < names.index("starter")
    # Every score ranks above every ZERO; the cheats are the ZEROs, each with its reason.
    assert verdicts == sorted(verdicts, key=lambda v: v != "SCORED")
    assert {"result_cache", "batch1_only", "zeros"} <= {
        n for n, v in zip(names, verdicts) if v == "ZERO"
    }
    assert "ZERO" in rows[-1]
    html_page = page.read_text()  # the same ranking, as a page
    assert html_page.startswith("<!DOCTYPE html>") and "<table>" in html_page
    assert html_page.index("<td>reference</td>") < html_page.index("<td>starter</td>")


def test_compare_refuses_grade_reports_of_two_exercises() -> None:
    def fake(exercise: str) -> dict[str, Any]:
        return {"exercise": {"name": exercise}, "verdict": "ZERO", "score": {"value": 0.0}}

    with pytest.raises(ConfigError, match="different exercises"):
        ranked([fake("a"), fake("b")])


def _leg_report(**changes: Any) -> dict[str, Any]:
    """A bench report's parts that gate a leg: offline (scored) and find-peak, both VALID."""

    def scenario(name: str) -> dict[str, Any]:
        return {
            "scenario": name,
            "validity": {"valid": True, "reasons": []},
            "audit": {"passed": True, "failing": [], "audited": 8},
            "distinct_samples": {"samples": 100, "repeated": 0},
        }

    report: dict[str, Any] = {
        "scenarios": [scenario("offline"), scenario("find-peak")],
        "verdict": {"valid": True, "reasons": []},
        "isolation": {"mode": "process"},
    }
    for name, (key, value) in changes.items():
        target = next(s for s in report["scenarios"] if s["scenario"] == name.replace("_", "-"))
        target[key] = value
    for s in report["scenarios"]:  # the bench verdict lists every scenario's reasons
        report["verdict"]["reasons"] += [f"{s['scenario']}: {r}" for r in s["validity"]["reasons"]]
    return report


def test_a_find_peak_that_confirms_no_peak_is_the_slos_finding_not_a_gate() -> None:
    slo_missed = {"valid": False, "reasons": ["p99 latency 302 ms exceeds the SLO of 130 ms"]}
    report = _leg_report(find_peak=("validity", slo_missed))
    assert not gate_reasons(report, "offline")  # scored on offline: still scored
    assert gate_reasons(report, "find-peak") == [
        "find-peak: p99 latency 302 ms exceeds the SLO of 130 ms"
    ]


def test_what_makes_answers_or_measurements_untrustworthy_gates_any_scenario() -> None:
    wrong = {"passed": False, "failing": [3, 5], "audited": 8}
    assert gate_reasons(_leg_report(find_peak=("audit", wrong)), "offline") == [
        "find-peak: audit failed: outputs of 2 of 8 audited samples do not match the reference"
    ]
    repeats = _leg_report(find_peak=("distinct_samples", {"samples": 100, "repeated": 4}))
    assert gate_reasons(repeats, "offline") == ["find-peak: 4 samples were repeats"]
    unstable = {"valid": False, "reasons": ["unstable: throughput varies by 35%"]}
    assert gate_reasons(_leg_report(offline=("validity", unstable)), "offline") == [
        "offline: unstable: throughput varies by 35%"
    ]
    flagged = _leg_report()
    flagged["verdict"]["reasons"].append("replay check: replayed queries ran 3x faster")
    flagged["isolation"] = {"mode": "none"}
    assert gate_reasons(flagged, "offline") == [
        "replay check: replayed queries ran 3x faster",
        "the runner did not run in an isolated worker process",
    ]
