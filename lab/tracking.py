"""Experiment tracking: log a bench or grade run to MLflow (optional extra `mlflow`).

    servelab bench --model ranker --mlflow-uri                   # ./mlruns, a local file store
    servelab bench --model ranker --mlflow-uri sqlite:///mlflow.db
    servelab bench --model ranker --mlflow-uri http://mlflow.internal:5000

One MLflow run per command, in the experiment `servelab-<kind>` (kind: bench, grade): the
settings as params, every scalar result as a metric, the report files as artifacts, and the
tags `servelab.kind` and `servelab.version`. The client is `mlflow-skinny` (pure Python,
about 20 s to install); `pip install 'servelab[mlflow]'`.

A local file store (`file:./mlruns`, the default, or a folder path) is in maintenance mode
in MLflow 3, which refuses it unless MLFLOW_ALLOW_FILE_STORE=true: `log_run` sets that
variable (if unset) for file stores only. View them with the full `mlflow` package:
`MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri ./mlruns`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lab import __version__
from lab.errors import BackendUnavailable, ConfigError

DEFAULT_URI = "file:./mlruns"
INSTALL_HINT = "pip install 'servelab[mlflow]'"
MAX_PARAM_CHARS = 500
_BATCH = 100  # MLflow's log_batch takes at most 100 params and 1000 metrics per call


def require_mlflow() -> Any:
    """The mlflow module, or one line saying how to install it."""
    try:
        import mlflow
    except ImportError:
        raise BackendUnavailable(f"--mlflow-uri needs MLflow: {INSTALL_HINT}") from None
    return mlflow


def resolve_uri(uri: str | None) -> str:
    """A tracking URI with a relative file store made absolute (`file:./mlruns`, `mlruns`)."""
    uri = (uri or DEFAULT_URI).strip()
    if not uri:
        raise ConfigError("--mlflow-uri is empty")
    if uri.startswith("file://"):
        return uri
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file:")).resolve().as_uri()
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        return Path(uri).resolve().as_uri()
    return uri


def flatten(data: Mapping[str, Any], prefix: str = "", skip: Iterable[str] = ()) -> dict[str, Any]:
    """Nested mappings -> {"a.b.c": leaf}; lists and keys in `skip` are left out."""
    skipped = set(skip)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in skipped:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}.", skipped))
        elif not isinstance(value, (list, tuple)):
            flat[name] = value
    return flat


def numeric_metrics(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number (bools as 0/1) of a nested mapping, flattened."""
    metrics = {}
    for key, value in flatten(data, prefix, skip=("histogram",)).items():
        if isinstance(value, bool) or (
            isinstance(value, (int, float)) and math.isfinite(float(value))
        ):
            metrics[key] = float(value)
    return metrics


def _clean_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def log_run(
    uri: str | None,
    kind: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts: Iterable[Path | str],
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log one finished run; returns its MLflow run id."""
    mlflow = require_mlflow()
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    resolved = resolve_uri(uri)
    if resolved.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    files = [Path(a) for a in artifacts]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"cannot log missing artifact(s): {', '.join(missing)}")
    client = MlflowClient(tracking_uri=resolved)
    experiment_name = f"servelab-{kind}"
    try:
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(experiment_name)
        )
        all_tags = {"servelab.kind": kind, "servelab.version": __version__, **(tags or {})}
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(f"MLflow at {resolved}: {exc.message.splitlines()[0]}") from None
    run_id = str(run.info.run_id)
    status = "FAILED"
    try:
        param_list = [
            Param(_clean_key(k), str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(params.items())
        ]
        timestamp = int(run.info.start_time)
        metric_list = [
            Metric(_clean_key(k), float(v), timestamp, 0) for k, v in sorted(metrics.items())
        ]
        for i in range(0, len(param_list), _BATCH):
            client.log_batch(run_id, params=param_list[i : i + _BATCH])
        for i in range(0, len(metric_list), _BATCH):
            client.log_batch(run_id, metrics=metric_list[i : i + _BATCH])
        client.log_batch(run_id, tags=[RunTag("mlflow.note.content", f"servelab {kind}")])
        for file in files:
            client.log_artifact(run_id, str(file))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id


def log_bench_report(uri: str | None, report: Mapping[str, Any], files: Iterable[Path]) -> str:
    """A bench report: its config as params, its scenarios' numbers and verdict as metrics."""
    params = flatten(report.get("config", {}), "config.")
    model = report.get("model", {})
    params.update({f"model.{k}": v for k, v in model.items() if not isinstance(v, (dict, list))})
    metrics: dict[str, float] = {}
    for entry in report.get("scenarios", []):
        metrics.update(numeric_metrics(entry, f"{entry.get('scenario', 'scenario')}."))
    verdict = report.get("verdict", {})
    metrics["verdict.valid"] = float(bool(verdict.get("valid")))
    metrics["wall_s"] = float(report.get("wall_s") or 0.0)
    name = str(report.get("name") or f"{model.get('name', 'model')}-{report.get('created_at', '')}")
    return log_run(uri, "bench", params, metrics, files, run_name=name)


def log_grade_report(uri: str | None, report: Mapping[str, Any], files: Iterable[Path]) -> str:
    """A grade report: exercise, submission and profile as params; the score, its interval,
    the verdict and every number of the automatic part as metrics."""
    exercise = report.get("exercise", {})
    submission = report.get("submission", {})
    params: dict[str, Any] = {
        "exercise": exercise.get("name"),
        "submission": submission.get("name"),
        "profile": report.get("profile"),
        "secret_seed": report.get("secret_seed"),
        "verdict": report.get("verdict"),
    }
    score = report.get("score") or {}
    metrics = numeric_metrics(report.get("automatic") or {}, "automatic.")
    if isinstance(score.get("value"), (int, float)):
        metrics["score"] = float(score["value"])
    ci = score.get("ci") or []
    if len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        metrics["score_ci_low"], metrics["score_ci_high"] = float(ci[0]), float(ci[1])
    metrics["zeroed"] = float(bool(score.get("zeroed")))
    name = f"{exercise.get('name', 'exercise')}-{submission.get('name', 'submission')}"
    return log_run(uri, "grade", params, metrics, files, run_name=name)
