"""A run stopped after some scenarios finished still writes what it measured: the report is
marked partial and INVALID with the reason, and the command exits non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.bench.config import BenchConfig
from lab.bench.report import load_report, write_reports
from lab.bench.run import PartialRun, run_bench
from lab.bench.scenarios import SCENARIOS
from lab.bench.scenarios.registry import Scenario
from lab.bench.selftest import NoopRunner, SyntheticWorkload, synthetic_handle

ROOT = Path(__file__).resolve().parent.parent
SHORT = dict(
    model="synthetic", runner="noop", duration_s=0.3, min_queries=64, warmup_queries=4,
    audit=False, replay_check=False, roofline=False, telemetry=False, stability_tolerance=1.0,
)  # fmt: skip


def test_a_later_scenario_that_raises_leaves_a_partial_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(context: Any, earlier: Any) -> dict[str, Any]:
        raise RuntimeError("the offline step broke")

    monkeypatch.setitem(SCENARIOS, "offline", Scenario("offline", broken, lambda r: []))
    config = BenchConfig.of(scenarios=["single-stream", "offline", "sweep"], **SHORT)
    with pytest.raises(PartialRun) as stopped:
        run_bench(config, handle=synthetic_handle(), workload=SyntheticWorkload(),
                  runner=NoopRunner())  # fmt: skip
    assert isinstance(stopped.value.error, RuntimeError)
    report = stopped.value.report
    assert [s["scenario"] for s in report["scenarios"]] == ["single-stream"]
    assert report["partial"] == {
        "stopped_at": "offline",
        "reason": "RuntimeError: the offline step broke",
        "completed": ["single-stream"],
        "not_run": ["sweep"],
    }
    assert report["verdict"]["valid"] is False
    (reason,) = [r for r in report["verdict"]["reasons"] if r.startswith("partial report")]
    assert "offline did not finish (RuntimeError: the offline step broke); not run: sweep" in reason
    paths = write_reports(report, tmp_path)  # schema-valid, and readable again
    assert load_report(paths[".json"])["partial"]["stopped_at"] == "offline"
    assert "PARTIAL REPORT" in paths[".md"].read_text()
    assert "PARTIAL REPORT" in paths[".html"].read_text()


def test_an_error_before_any_scenario_finished_is_raised_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(context: Any, earlier: Any) -> dict[str, Any]:
        raise RuntimeError("first step broke")

    monkeypatch.setitem(SCENARIOS, "single-stream", Scenario("single-stream", broken, list))
    config = BenchConfig.of(scenarios=["single-stream"], **SHORT)
    with pytest.raises(RuntimeError, match="first step broke"):
        run_bench(config, handle=synthetic_handle(), workload=SyntheticWorkload(),
                  runner=NoopRunner())  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_during_offline_writes_the_single_stream_report(
    encoder_small: Any, tmp_path: Path
) -> None:
    """The real CLI with an isolated plugin worker that presses Ctrl-C on the harness."""
    marker = tmp_path / "marker.json"
    args = [
        "bench", "--model", "encoder", "--size", "small", "--duration-s", "1",
        "--min-queries", "64", "--warmup-queries", "8", "--stability-tolerance", "0.5",
        "--no-roofline", "--no-progress", "--scenario", "single-stream",
        "--scenario", "offline", "--batch-size", "8",
        "--runner", "tests/plugins/interrupt.py:InterruptRunner",
        "--runner-option", f"marker={marker}", "--output", str(tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SERVELAB_SECRET_SEED", None)
    done = subprocess.run(
        [sys.executable, "-m", "lab", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert json.loads(marker.read_text()).get("interrupted"), done.stderr[-2000:]
    assert done.returncode == 130, done.stderr[-2000:]
    assert "servelab: interrupted" in done.stderr
    assert "PARTIAL: stopped during offline: interrupted (Ctrl-C)" in done.stdout
    report = load_report(tmp_path / "out" / "latest.json")
    assert [s["scenario"] for s in report["scenarios"]] == ["single-stream"]
    assert report["partial"]["reason"] == "interrupted (Ctrl-C)"
    assert report["verdict"]["valid"] is False
    assert (tmp_path / "out" / "latest.html").is_file()
