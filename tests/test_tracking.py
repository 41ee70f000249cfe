"""Experiment tracking: a short real bench logged to a real local MLflow file store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab.cli import main
from lab.errors import ConfigError
from lab.repository import ModelHandle
from lab.tracking import flatten, log_run, numeric_metrics, resolve_uri

ROOT = Path(__file__).resolve().parent.parent
SHORT_BENCH = [
    "bench",
    "--model",
    "ranker",
    "--scenario",
    "single-stream",
    "--duration-s",
    "0.5",
    "--min-queries",
    "64",
    "--warmup-queries",
    "4",
    "--rounds",
    "1",
    "--audit-count",
    "16",
    "--no-replay-check",
    "--no-progress",
]


def test_uris_resolve_relative_file_stores_and_keep_servers() -> None:
    assert resolve_uri(None) == (Path.cwd() / "mlruns").as_uri()
    assert resolve_uri("file:./x") == (Path.cwd() / "x").as_uri()
    assert resolve_uri("runs") == (Path.cwd() / "runs").as_uri()
    assert resolve_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert resolve_uri("sqlite:///m.db") == "sqlite:///m.db"
    with pytest.raises(ConfigError, match="--mlflow-uri is empty"):
        resolve_uri("  ")


def test_flatten_keeps_scalars_and_numeric_metrics_only_finite_numbers() -> None:
    data = {"a": {"b": 1, "c": [1, 2], "histogram": {"n": 3}}, "d": "x", "e": float("nan")}
    assert flatten(data) == {"a.b": 1, "a.histogram.n": 3, "d": "x", "e": data["e"]}
    assert numeric_metrics({**data, "ok": True}) == {"a.b": 1.0, "ok": 1.0}


def test_bench_run_lands_in_a_local_mlflow_store(tmp_path: Path, ranker_small: ModelHandle) -> None:
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    reports = tmp_path / "reports"
    code = main([*SHORT_BENCH, "--output", str(reports), "--mlflow-uri", str(store)])
    assert code in (0, 1)  # INVALID (a loaded machine can make it so) is logged too
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("servelab-bench")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["config.model"] == "ranker"
    assert run.data.params["model.size"] == "small"
    assert run.data.tags["servelab.kind"] == "bench"
    assert run.data.metrics["verdict.valid"] == float(code == 0)
    assert run.data.metrics["single-stream.throughput.samples_per_s"] > 0
    assert run.data.metrics["single-stream.latency.percentiles.p90.ms"] > 0
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    written = {p.name for p in reports.iterdir() if not p.name.startswith("latest")}
    assert written and logged == written  # the .json, .md and .html of this run


def test_log_run_refuses_a_missing_artifact_before_creating_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot log missing artifact"):
        log_run(str(tmp_path / "m"), "grade", {}, {}, [tmp_path / "nope.json"])
    assert not (tmp_path / "m").exists()


def test_without_mlflow_the_flag_fails_first_with_the_install_hint(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['mlflow'] = None\n"  # as if the extra were not installed
        "from lab.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    reports = tmp_path / "reports"
    args = [*SHORT_BENCH, "--output", str(reports), "--mlflow-uri"]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "servelab: error: --mlflow-uri needs MLflow: pip install 'servelab[mlflow]'"
    ]
    assert not reports.exists() or not any(reports.iterdir())  # nothing was measured


def test_grade_run_lands_in_a_local_mlflow_store(tmp_path: Path) -> None:
    """ship-it is graded from its files (no benchmark): the reference solution scores 1."""
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    grades = tmp_path / "grades"
    solution = ROOT / "exercises" / "ship-it" / "interviewer" / "solution"
    code = main(
        ["grade", str(solution), "--exercise", "ship-it", "--output", str(grades),
         "--no-progress", "--mlflow-uri", str(store)]
    )  # fmt: skip
    assert code == 0
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("servelab-grade")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["exercise"] == "ship-it"
    assert run.data.params["verdict"] == "SCORED"
    assert run.data.metrics["score"] == 1.0
    assert run.data.metrics["zeroed"] == 0.0
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert logged == {p.name for p in grades.iterdir()}  # the .grade.json and .grade.md
