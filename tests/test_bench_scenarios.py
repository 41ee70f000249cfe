"""Scenarios on real models and real ONNX Runtime: the anti-cheat and honesty properties.

Each misbehaving runner is the real ONNX Runtime runner with one twist, so the harness is
tested against what a candidate could actually ship: a stall, a result cache, wrong outputs
only in batches, inputs scribbled over.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lab.bench.audit import replay_check
from lab.bench.config import BenchConfig
from lab.bench.report import jsonable
from lab.bench.run import run_bench
from lab.bench.selftest import CachingRunner
from lab.bench.target import InProcessTarget
from lab.repository import ModelHandle
from lab.runners.onnxruntime import OnnxRuntimeRunner
from lab.verify import verify
from lab.workload import Workload


class StallingRunner(OnnxRuntimeRunner):
    """Stalls for `stall_s` once every `every` calls (a GC pause, a page fault storm...)."""

    name = "stalling"

    def __init__(self, every: int = 250, stall_s: float = 0.3) -> None:
        super().__init__()
        self.every, self.stall_s, self.calls = every, stall_s, 0

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.calls += 1
        if self.calls % self.every == 0:
            time.sleep(self.stall_s)
        return super().infer_impl(inputs)


class WrongInBatchesRunner(OnnxRuntimeRunner):
    """Correct at batch 1; nudges every output when the batch holds more than one sample."""

    name = "wrong-in-batches"

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        outputs = dict(super().infer_impl(inputs))
        if next(iter(inputs.values())).shape[0] > 1:
            outputs = {k: v + np.float32(1e-3) for k, v in outputs.items()}
        return outputs


class MutatingRunner(OnnxRuntimeRunner):
    """Computes correctly, then overwrites its input arrays in place."""

    name = "mutating"

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        outputs = super().infer_impl(inputs)
        for array in inputs.values():
            array[...] = 0
        return outputs


def _bench(handle: ModelHandle, runner: Any, **settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        model=handle.name,
        size=handle.size,
        runner=runner.name,
        roofline=False,
        replay_check=False,
        telemetry=False,
        audit=False,
        warmup_queries=16,
        min_queries=50,
        stability_tolerance=1.0,
    )
    base.update(settings)
    return run_bench(BenchConfig.of(**base), handle=handle, runner=runner)


@pytest.mark.slow
def test_a_stall_shows_in_server_p99_but_hides_in_a_closed_loop(ranker_small: ModelHandle) -> None:
    server = _bench(
        ranker_small, StallingRunner(), scenarios=["server"], qps=500.0, duration_s=3.0
    )["scenarios"][0]
    p99_ms = server["latency"]["percentiles"]["p99"]["ms"]
    # Queries that arrived during a 300 ms stall waited for it: the tail shows the stall.
    assert p99_ms > 200, server["latency"]
    assert not server["validity"]["valid"]
    assert any("exceeds the SLO of 60 ms" in r for r in server["validity"]["reasons"])
    # The same runner measured closed-loop: each stall delays just one query (coordinated
    # omission), so p99 stays far below the stall while the max still sees it.
    single = _bench(
        ranker_small,
        StallingRunner(),
        scenarios=["single-stream"],
        duration_s=0.1,
        min_queries=1000,
        max_queue_delay_us=0,
    )["scenarios"][0]
    assert single["queries"] >= 1000  # about 4 stalls: 0.4% of the queries
    assert single["latency"]["max_ms"] >= 300
    assert single["latency"]["percentiles"]["p99"]["ms"] < 300


def test_a_caching_runner_is_flagged_by_the_replay_check(encoder_small: ModelHandle) -> None:
    workload = Workload(encoder_small)
    runner = CachingRunner().load(encoder_small)
    with runner, InProcessTarget(runner, max_queue_delay_us=0) as target:
        result = replay_check(target, workload, count=48)
    assert result["flagged"]
    assert result["ratio"] > 1.5
    assert "look cached" in result["reason"]


def test_an_honest_runner_passes_the_replay_check(encoder_small: ModelHandle) -> None:
    workload = Workload(encoder_small)
    runner = OnnxRuntimeRunner().load(encoder_small)
    with runner, InProcessTarget(runner, max_queue_delay_us=0) as target:
        result = replay_check(target, workload, count=48)
    assert not result["flagged"], result
    # A pass that looks cached is re-measured on new samples, so an honest run may hold two.
    assert result["fresh_queries"] == result["replay_queries"] == 48 * len(result["passes"])


def test_wrong_outputs_in_batches_pass_verify_but_fail_the_server_audit(
    ranker_small: ModelHandle,
) -> None:
    runner = WrongInBatchesRunner().load(ranker_small)
    assert verify(ranker_small, runner, batch_size=1).passed
    assert not verify(ranker_small, runner, batch_size=4).passed  # control: it is wrong
    report = _bench(
        ranker_small,
        runner,
        scenarios=["server"],
        qps=3000.0,
        duration_s=1.0,
        max_queue_delay_us=2000,
        audit=True,
        audit_count=48,
    )
    server = report["scenarios"][0]
    audit = server["audit"]
    assert not audit["passed"]
    assert audit["failing"] and all(f["batch_size"] > 1 for f in audit["failing"])
    assert not server["validity"]["valid"]
    assert any(r.startswith("audit failed") for r in server["validity"]["reasons"])
    assert not report["verdict"]["valid"] and report["verdict"]["audit_passed"] is False


def test_a_runner_that_mutates_its_inputs_does_not_corrupt_the_audit(
    ranker_small: ModelHandle,
) -> None:
    report = _bench(
        ranker_small,
        MutatingRunner(),
        scenarios=["single-stream"],
        duration_s=0.5,
        audit=True,
        audit_count=24,
        max_queue_delay_us=0,
    )
    audit = report["scenarios"][0]["audit"]
    # The reference is computed from the harness's pristine samples, not the scribbled copies.
    assert audit["passed"], audit["failures"]
    assert audit["audited"] == 24


def test_an_honest_server_run_is_valid_with_its_audit_passed(ranker_small: ModelHandle) -> None:
    report = _bench(
        ranker_small,
        OnnxRuntimeRunner(),
        scenarios=["server"],
        qps=400.0,
        duration_s=2.0,
        min_queries=700,
        audit=True,
        audit_count=16,
    )
    server = report["scenarios"][0]
    assert server["validity"]["valid"], server["validity"]
    assert server["queries"] >= 700
    assert server["audit"]["passed"] and server["distinct_samples"]["repeated"] == 0
    assert server["issue_lag"]["p50_ms"] is not None


class TimedRunner(OnnxRuntimeRunner):
    """Records when it ran; optionally adds a fixed delay (a slower baseline)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.calls: list[float] = []

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.calls.append(time.perf_counter())
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().infer_impl(inputs)


def test_baseline_alternates_in_the_same_run_and_reports_a_speedup_interval(
    ranker_small: ModelHandle,
) -> None:
    candidate, baseline = TimedRunner(), TimedRunner(delay_s=0.003)
    config = BenchConfig.of(
        model="ranker", size="small", scenarios=["single-stream"], duration_s=1.0,
        min_queries=100, warmup_queries=8, rounds=2, max_queue_delay_us=0, audit=False,
        replay_check=False, roofline=False, telemetry=False, stability_tolerance=5.0,
    )  # fmt: skip
    report = run_bench(config, handle=ranker_small, runner=candidate, baseline_runner=baseline)
    single = report["scenarios"][0]
    speedup = single["speedup"]
    assert speedup["metric"] == "latency_p90"  # single-stream's primary metric
    low, high = speedup["ci"]
    assert low <= speedup["ratio"] <= high
    assert low > 2 and speedup["faster"] and not speedup["within_noise"]  # 3 ms vs ~0.2 ms
    assert single["baseline"]["queries"] >= 100
    assert any(m["name"] == "speedup_latency_p90" for m in single["metrics"])
    assert set(speedup["aa_ratios"]) == {"candidate", "baseline"} and speedup["noise_floor"] >= 0.05
    from lab.bench.render import render_markdown, summary_table

    assert "single-stream (baseline" in summary_table(report)  # the baseline's own figures
    assert "single-stream (baseline" in render_markdown(jsonable(report))
    # ABBA: the candidate ran both before and after the baseline's timed segments.
    timed_baseline = baseline.calls[config.warmup_queries :]
    assert min(candidate.calls) < min(timed_baseline) < max(timed_baseline) < max(candidate.calls)


@pytest.mark.slow
def test_a_secret_seed_is_read_once_removed_and_never_written(
    ranker_small: ModelHandle, tmp_path: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    args = [
        sys.executable, "-m", "lab", "bench", "--model", "ranker", "--scenario", "single-stream",
        "--duration-s", "0.3", "--min-queries", "64", "--audit-count", "8", "--replay-count",
        "16", "--no-roofline", "--no-progress", "--stability-tolerance", "5", "--output",
        str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "SERVELAB_SECRET_SEED": "918273645"}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    text = (tmp_path / "latest.json").read_text()
    report = json.loads(text)
    assert report["model"]["seed"] == "public+secret"
    assert "918273645" not in text
    assert "918273645" not in json.dumps(report["config"])
    assert report["scenarios"][0]["audit"]["passed"]


def test_offline_waits_out_a_slow_but_steady_runner() -> None:
    """Each burst takes longer than --timeout-s in all, each batch far less: VALID."""
    import threading

    from lab.bench.selftest import NoopRunner, SyntheticWorkload, synthetic_handle

    class Slow(NoopRunner):
        def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
            threading.Event().wait(0.02)  # 20 ms per batch of 4: 200 samples/s
            return super().infer_impl(inputs)

    config = BenchConfig.of(
        model="synthetic", runner="slow", scenarios=["offline"], batch_size=4, duration_s=0.3,
        min_queries=64, warmup_queries=4, timeout_s=0.15, audit=False, replay_check=False,
        roofline=False, telemetry=False, stability_tolerance=5.0,
    )  # fmt: skip
    handle = synthetic_handle(max_batch_size=4, slo_ms=1000.0)
    report = run_bench(config, handle=handle, workload=SyntheticWorkload(), runner=Slow())
    offline = report["scenarios"][0]
    assert offline["failed"] == 0 and offline["validity"]["valid"], offline["validity"]
    assert offline["samples"] >= 64  # one burst: 16 batches, at least 0.32 s


def test_scenarios_register_in_help_order_and_cover_the_main_job() -> None:
    from lab.bench.config import MAIN_JOB_SCENARIOS
    from lab.bench.scenarios import SCENARIOS

    assert tuple(SCENARIOS) == ("single-stream", "offline", "server", "find-peak", "sweep")
    assert set(MAIN_JOB_SCENARIOS) <= set(SCENARIOS)
    assert all(name == scenario.name for name, scenario in SCENARIOS.items())
