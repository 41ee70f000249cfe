"""The load generator against in-process targets: copies, distinct samples, schedules,
failures, windows and validity rules (synthetic model, no export needed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import numpy as np
import pytest

from lab.bench.analysis import MIN_QUERIES_FOR_PERCENTILE, Rules, summarize, windows
from lab.bench.engine import QuerySource, run_closed_loop, run_open_loop
from lab.bench.schedule import poisson_schedule
from lab.bench.selftest import NoopRunner, SyntheticWorkload, synthetic_handle
from lab.bench.target import InProcessTarget
from lab.errors import ConfigError, RunnerError
from lab.repository import ModelHandle


def _source(count: int, batch_size: int = 1, stream: str = "t") -> QuerySource:
    workload = SyntheticWorkload()
    return QuerySource(
        lambda n, chunk: workload.samples(n, f"{stream}.{chunk}"),
        workload.collate,
        count,
        batch_size,
    )


class MutatingRunner(NoopRunner):
    """Scribbles over its inputs after reading them."""

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        out = {"y": inputs["x"].sum(axis=1, keepdims=True)}
        inputs["x"][...] = -99.0
        return out


class FailingRunner(NoopRunner):
    def __init__(self, every: int) -> None:
        super().__init__()
        self.every, self.calls = every, 0

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.calls += 1
        if self.calls % self.every == 0:
            raise RuntimeError("backend fell over")
        return super().infer_impl(inputs)


class SleepRunner(NoopRunner):
    """A fixed service time per batch."""

    def __init__(self, sleep_s: float) -> None:
        super().__init__()
        self.sleep_s = sleep_s

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        time.sleep(self.sleep_s)
        return super().infer_impl(inputs)


@pytest.fixture
def handle() -> ModelHandle:
    return synthetic_handle(max_batch_size=64)


def test_target_gets_copies_so_a_mutating_runner_cannot_touch_the_samples(
    handle: ModelHandle,
) -> None:
    source = _source(200)
    pristine = [s["x"].copy() for s in source.samples]
    with InProcessTarget(MutatingRunner().load(handle), max_queue_delay_us=0) as target:
        segment = run_closed_loop(target, source, 1, min_queries=200, keep_outputs=True)
    assert segment.ok.all()
    for sample, original in zip(source.samples, pristine):
        assert np.array_equal(sample["x"], original)
    # The outputs were computed before the scribbling: they match the pristine samples.
    for q, ids in enumerate(segment.sample_ids):
        assert segment.outputs[q]["y"][0, 0] == pytest.approx(pristine[ids[0]].sum(), rel=1e-5)
    # Control: the runner really did scribble over what it was given.
    assert (source.queries[0].inputs["x"] == -99.0).all()


def test_every_sample_is_distinct_and_repeats_are_counted() -> None:
    source = _source(500)
    assert source.duplicates == 0
    assert len({s["x"].tobytes() for s in source.samples}) == 500
    workload = SyntheticWorkload()
    repeating = QuerySource(lambda n, chunk: workload.samples(n, "same"), workload.collate, 10)
    repeating.get(20)  # a refill draws the same stream again
    assert repeating.duplicates == repeating.refills * 10 > 0


def test_open_loop_issues_on_schedule_and_never_early(handle: ModelHandle) -> None:
    source = _source(600)
    offsets = poisson_schedule(2000.0, 600, seed=3)
    with InProcessTarget(NoopRunner().load(handle), max_queue_delay_us=0) as target:
        segment = run_open_loop(target, source.queries, offsets)
    assert segment.ok.all() and segment.queries == 600
    assert (segment.issue_lag_ns >= 0).all()
    assert np.array_equal(segment.scheduled_ns - segment.t0_ns, offsets)
    assert (segment.done_ns >= segment.issued_ns).all()


def test_latency_counts_from_the_schedule_when_the_target_falls_behind(
    handle: ModelHandle,
) -> None:
    # 5 ms per query, arrivals every 1 ms: the queue grows, and so must latency.
    source = _source(100)
    offsets = (np.arange(1, 101) * 1_000_000).astype(np.int64)
    runner = SleepRunner(0.005).load(handle)
    with InProcessTarget(runner, max_batch_size=1, max_queue_delay_us=0) as target:
        segment = run_open_loop(target, source.queries, offsets)
    latency_ms = segment.latency_ns / 1e6
    # The last query waits behind ~99 others of 5 ms: ~400 ms, though its own compute is 5 ms.
    assert latency_ms[-1] > 300
    assert segment.compute_ns[-1] / 1e6 < latency_ms[-1] / 10


def test_failed_queries_are_recorded_not_raised_and_invalidate(handle: ModelHandle) -> None:
    source = _source(300)
    with InProcessTarget(FailingRunner(every=10).load(handle), max_queue_delay_us=0) as target:
        segment = run_closed_loop(target, source, 1, min_queries=300)
    assert segment.failed == 30 and (~segment.ok).sum() == 30
    assert "backend fell over" in segment.errors[0]
    result = summarize("single-stream", [segment], Rules(min_duration_s=0, min_queries=10))
    assert not result["validity"]["valid"]
    assert any("30 of 300 queries failed" in r for r in result["validity"]["reasons"])


def test_closed_loop_keeps_concurrency_in_flight(handle: ModelHandle) -> None:
    source = _source(50)
    runner = SleepRunner(0.02).load(handle)
    # The batcher waits up to 200 ms for a full batch of 4: only 4 streams in flight fill it.
    with InProcessTarget(runner, max_batch_size=4, max_queue_delay_us=200_000) as target:
        segment = run_closed_loop(target, source, concurrency=4, min_queries=40)
    assert segment.queries >= 40
    assert segment.batch_size.max() == 4


def test_closed_loop_runs_until_stable_up_to_its_limit(handle: ModelHandle) -> None:
    calls: list[int] = []

    def never_stable(snapshot) -> bool:
        calls.append(snapshot.queries)
        return False

    source = _source(100)
    with InProcessTarget(SleepRunner(0.001).load(handle), max_queue_delay_us=0) as target:
        segment = run_closed_loop(
            target, source, 1, min_duration_s=0.2, until=never_stable, check_every_s=0.05,
            max_duration_s=0.4,
        )  # fmt: skip
    assert len(calls) >= 2 and calls == sorted(calls)
    assert segment.duration_ns >= 0.4e9
    assert source.refills >= 1  # it needed more samples than were prepared


def test_too_few_queries_for_a_p99_claim_is_invalid(handle: ModelHandle) -> None:
    source = _source(200)
    with InProcessTarget(NoopRunner().load(handle), max_queue_delay_us=0) as target:
        segment = run_open_loop(target, source.queries, poisson_schedule(1000.0, 200, 1))
    result = summarize("server", [segment], Rules(min_duration_s=0, min_queries=100, slo_ms=50))
    reasons = result["validity"]["reasons"]
    assert any("too few queries for a p99 claim: 200 measured, 662 needed" in r for r in reasons)
    assert result["latency"]["percentiles"]["p99"]["claimed"] is False
    assert result["latency"]["percentiles"]["p90"]["claimed"] is True
    assert MIN_QUERIES_FOR_PERCENTILE[99.0] == 662 and MIN_QUERIES_FOR_PERCENTILE[90.0] == 64


def test_minimum_duration_and_count_are_enforced(handle: ModelHandle) -> None:
    source = _source(70)
    with InProcessTarget(NoopRunner().load(handle), max_queue_delay_us=0) as target:
        segment = run_closed_loop(target, source, 1, min_queries=70)
    result = summarize("single-stream", [segment], Rules(min_duration_s=30, min_queries=1000))
    reasons = " | ".join(result["validity"]["reasons"])
    assert "less than the minimum duration of 30 s" in reasons
    assert "70 queries, fewer than the minimum of 1000" in reasons


def test_stability_windows_flag_a_run_that_slows_down(handle: ModelHandle) -> None:
    class Slowing(NoopRunner):
        def __init__(self) -> None:
            super().__init__()
            self.started = time.perf_counter()

        def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
            # 1 ms per query for 0.6 s, then 4 ms: throughput drops by 4x.
            time.sleep(0.001 if time.perf_counter() - self.started < 0.6 else 0.004)
            return super().infer_impl(inputs)

    source = _source(400)
    with InProcessTarget(Slowing().load(handle), max_queue_delay_us=0) as target:
        segment = run_closed_loop(target, source, 1, min_duration_s=1.0)
    rules = Rules(min_duration_s=1.0, min_queries=10, windows=5, stability_tolerance=0.5)
    found = windows([segment], rules.window_s)
    assert len(found) >= 5
    result = summarize("single-stream", [segment], rules)
    assert not result["stability"]["stable"]
    assert any("unstable: throughput" in r for r in result["validity"]["reasons"])


def test_in_process_target_checks_its_batch_limit(handle: ModelHandle) -> None:
    runner = NoopRunner().load(handle)
    with pytest.raises(ConfigError, match="exceeds the model's max_batch_size 64"):
        InProcessTarget(runner, max_batch_size=65)
    with pytest.raises(ConfigError, match="loaded runner"):
        InProcessTarget(NoopRunner())


def test_a_target_that_never_answers_times_out_as_failures(handle: ModelHandle) -> None:
    gate = threading.Event()

    class Hanging(NoopRunner):
        def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
            gate.wait(5)
            return super().infer_impl(inputs)

    source = _source(3)
    target = InProcessTarget(Hanging().load(handle), max_queue_delay_us=0)
    target.start()
    try:
        segment = run_open_loop(target, source.queries, np.zeros(3, np.int64), timeout_s=0.3)
    finally:
        gate.set()
        target.stop()
    assert segment.failed == 3
    assert "no answer within 0.3 s" in segment.errors[-1]


def test_runner_errors_reach_the_segment_as_messages(handle: ModelHandle) -> None:
    # Through the base Runner, a backend exception becomes a one-line RunnerError.
    source = _source(5)
    with InProcessTarget(FailingRunner(every=1).load(handle), max_queue_delay_us=0) as target:
        segment = run_closed_loop(target, source, 1, min_queries=5)
    assert segment.failed == 5
    assert segment.errors[0].startswith("runner noop failed: RuntimeError")
    assert issubclass(RunnerError, Exception)


def test_window_differences_within_sampling_noise_are_not_instability() -> None:
    from lab.bench.analysis import stability

    def window(rate: float, se: float) -> dict[str, float]:
        return {"samples_per_s": rate, "samples_per_s_se": se, "p50_ms": 1.0, "p50_ms_se": 0.01}

    rules = Rules(min_duration_s=1, stability_tolerance=0.15)
    noisy = [window(100, 12), window(130, 12), window(110, 12)]  # 27% apart, 1.8 SE
    verdict, reasons = stability("offline", noisy, rules)
    assert verdict["stable"] and not reasons
    precise = [window(100, 1), window(130, 1), window(110, 1)]  # 27% apart, 21 SE
    verdict, reasons = stability("offline", precise, rules)
    assert not verdict["stable"]
    assert "more than the 15% tolerance and more than their sampling noise" in reasons[0]


def test_a_slow_but_steady_burst_outlasts_the_timeout_and_completes(handle: ModelHandle) -> None:
    # 24 batches of 4 at 30 ms each: about 0.7 s in all, each answer well within 0.25 s.
    source = _source(96)
    runner = SleepRunner(0.03).load(handle)
    with InProcessTarget(runner, max_batch_size=4, max_queue_delay_us=0) as target:
        segment = run_open_loop(target, source.queries, np.zeros(96, np.int64), timeout_s=0.25)
    assert segment.failed == 0 and segment.ok.all(), segment.errors
    assert segment.duration_ns / 1e9 > 0.25  # the burst as a whole took longer than timeout_s


def test_a_target_that_stalls_mid_burst_fails_the_rest_as_unanswered(handle: ModelHandle) -> None:
    gate = threading.Event()

    class StallsAfterTwo(NoopRunner):
        calls = 0

        def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
            self.calls += 1
            if self.calls > 2:
                gate.wait(5)
            return super().infer_impl(inputs)

    source = _source(16)
    target = InProcessTarget(StallsAfterTwo().load(handle), max_batch_size=4, max_queue_delay_us=0)
    target.start()
    try:
        segment = run_open_loop(target, source.queries, np.zeros(16, np.int64), timeout_s=0.3)
    finally:
        gate.set()
        target.stop()
    answered = int(segment.ok.sum())  # the two batches before the stall
    assert 2 <= answered <= 8 and segment.failed == 16 - answered
    assert f"{16 - answered} queries got no answer within 0.3 s" in segment.errors[-1]
