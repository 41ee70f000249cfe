"""The TEST01 audit selection and the TEST04 replay decision.

The audit must not be predictable from anything the target could know (the workload's
seeds); the replay check must never flag an honest runner on a noisy machine while a
result cache is flagged every time. The replay tests run the real ONNX Runtime runner; the
decision itself is also tested on synthetic latencies, so every assertion is a decision,
never a timing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from lab.bench.audit import decide_replay, median_lower_bound, replay_check, run_audit
from lab.bench.engine import Sample, Segment
from lab.bench.schema import report_schema, validate
from lab.bench.selftest import CachingRunner
from lab.bench.target import InProcessTarget
from lab.errors import RunnerError
from lab.repository import ModelHandle
from lab.runners.onnxruntime import OnnxRuntimeRunner
from lab.workload import Workload

# ----- the audit selection (TEST01) ---------------------------------------------------------


class _Passed:
    passed = True
    failures: list[str] = []
    failing_samples: list[int] = []

    def to_dict(self) -> dict[str, Any]:
        return {"passed": True}


class _AlwaysPasses:
    def check(self, outputs: Sequence[Any], expected: Sequence[Any]) -> _Passed:
        return _Passed()


class RecordingWorkload:
    """Samples that carry their own index; records which ones the audit asks about."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def rng(self, stream: str = "perf") -> np.random.Generator:
        raise AssertionError(f"the audit drew from the workload's generator ({stream!r})")

    def samples(self, n: int, stream: str = "perf") -> list[dict[str, np.ndarray]]:
        return [{"id": np.array([[i]], dtype=np.int64)} for i in range(n)]

    def collate(self, samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {"id": np.concatenate([s["id"] for s in samples])}

    def reference(self, samples: Sequence[Sample]) -> list[dict[str, np.ndarray]]:
        self.asked.extend(int(s["id"][0, 0]) for s in samples)
        return [{"y": s["id"].astype(np.float32)} for s in samples]

    def checker(self, precision: str | None = None) -> _AlwaysPasses:
        return _AlwaysPasses()


def _segment(outputs: Sequence[Mapping[str, np.ndarray]]) -> Segment:
    """A closed-loop segment of batch-1 queries, each answered with `outputs[q]`."""
    n = len(outputs)
    zeros = np.zeros(n, dtype=np.int64)
    return Segment(
        kind="closed",
        t0_ns=0,
        end_ns=n,
        scheduled_ns=zeros,
        issued_ns=zeros,
        done_ns=np.arange(1, n + 1, dtype=np.int64),
        queue_ns=zeros,
        compute_ns=zeros,
        batch_size=np.ones(n, dtype=np.int64),
        samples=np.ones(n, dtype=np.int64),
        ok=np.ones(n, dtype=bool),
        outputs={q: dict(o) for q, o in enumerate(outputs)},
        sample_ids=[(q,) for q in range(n)],
    )


def test_two_audits_of_the_same_run_check_different_samples() -> None:
    workload = RecordingWorkload()
    samples = workload.samples(2000)
    segments = [(_segment([{"y": s["id"].astype(np.float32)} for s in samples]), samples)]
    first = run_audit(segments, workload, None, count=32)
    picked_first, workload.asked = workload.asked, []
    second = run_audit(segments, workload, None, count=32)
    assert first["passed"] and second["passed"]
    assert len(set(picked_first)) == len(set(workload.asked)) == 32
    # Two equal draws of 32 out of 2000 happen with probability 1 / C(2000, 32) ~ 1e-75.
    assert sorted(picked_first) != sorted(workload.asked)


def test_the_audit_selection_does_not_come_from_the_workload_seed(
    encoder_small: ModelHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    workload = Workload(encoder_small)
    samples = workload.samples(24, "audit-test")
    runner = OnnxRuntimeRunner().load(encoder_small)
    with runner:
        outputs = [dict(runner.infer(workload.collate([s]))) for s in samples]

    def no_seeded_draws(stream: str = "perf") -> np.random.Generator:
        raise AssertionError(f"run_audit drew from workload.rng({stream!r})")

    monkeypatch.setattr(workload, "rng", no_seeded_draws)
    result = run_audit([(_segment(outputs), samples)], workload, None, count=8)
    assert result["passed"], result["failures"]
    assert result["audited"] == 8


# ----- the replay decision on synthetic latencies (TEST04) ----------------------------------


def _latencies(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Long-tailed per-sample costs (like the encoder's lengths), each measured twice with
    independent multiplicative noise and now and then a stalled query."""
    cost_ns = 2e6 * np.exp(0.6 * rng.standard_normal(n))

    def measured() -> np.ndarray:
        stalls = np.where(rng.random(n) < 0.05, rng.uniform(2.0, 20.0, n), 1.0)
        return cost_ns * np.exp(noise * rng.standard_normal(n)) * stalls

    return measured(), measured()


def test_noisy_honest_latencies_are_not_flagged() -> None:
    rng = np.random.default_rng(7)
    for _ in range(500):
        fresh, replay = _latencies(rng, 64, noise=0.3)
        decided = decide_replay(fresh.tolist(), replay.tolist())
        assert not decided.flagged, decided


def test_a_clear_three_fold_speed_up_is_flagged() -> None:
    rng = np.random.default_rng(11)
    for _ in range(100):
        fresh, replay = _latencies(rng, 64, noise=0.3)
        decided = decide_replay(fresh.tolist(), (replay / 3).tolist())
        assert decided.flagged, decided
        assert decided.lower_bound is not None and decided.lower_bound > 1.25


def test_one_block_hit_by_load_does_not_flag() -> None:
    rng = np.random.default_rng(3)
    fresh, replay = _latencies(rng, 64, noise=0.1)
    fresh[16:32] *= 5.0  # the whole fresh half of block 2 ran on a loaded machine
    decided = decide_replay(fresh.tolist(), replay.tolist())
    assert len(decided.block_ratios) == 4 and max(decided.block_ratios) > 3
    assert not decided.flagged


def test_the_lower_bound_is_an_order_statistic_of_the_block_ratios() -> None:
    assert median_lower_bound([3.0, 1.0, 2.0, 4.0], 0.9) == (1.0, 0.9375)
    bound, confidence = median_lower_bound([8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 0.9)
    assert bound == 2.0 and confidence == pytest.approx(1 - 9 / 256)
    assert median_lower_bound([1.5], 0.9) == (1.5, 0.5)


def test_paired_latencies_must_match() -> None:
    with pytest.raises(ValueError, match="3 fresh latencies but 2 replayed"):
        decide_replay([1.0, 2.0, 3.0], [1.0, 2.0])


# ----- the replay check on real ONNX Runtime ------------------------------------------------


class FailingRunner(OnnxRuntimeRunner):
    """Honest, but every seventh call fails."""

    name = "failing"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.calls += 1
        if self.calls % 7 == 0:
            raise RunnerError("injected failure")
        return super().infer_impl(inputs)


def _replay(handle: ModelHandle, runner: OnnxRuntimeRunner, **settings: Any) -> dict[str, Any]:
    loaded = runner.load(handle)
    with loaded, InProcessTarget(loaded, max_queue_delay_us=0, preferred_batch_sizes=()) as target:
        result = replay_check(target, Workload(handle), **settings)
    assert validate(result, report_schema()["properties"]["replay"]) == []
    return result


def test_an_honest_runner_is_not_flagged(encoder_small: ModelHandle) -> None:
    result = _replay(encoder_small, OnnxRuntimeRunner())
    assert not result["flagged"], result
    assert result["reason"].startswith("not flagged")
    assert result["fresh_queries"] == result["replay_queries"] == 64 * len(result["passes"])
    assert result["passes"][-1]["blocks"] == 4 and not result["passes"][-1]["flagged"]


def test_a_caching_runner_is_flagged_in_every_pass(encoder_small: ModelHandle) -> None:
    result = _replay(encoder_small, CachingRunner())
    assert result["flagged"]
    assert "look cached" in result["reason"] and "2 of 2 passes" in result["reason"]
    assert [p["flagged"] for p in result["passes"]] == [True, True]
    assert result["passes"][1]["stream"] != result["passes"][0]["stream"]
    assert result["lower_bound"] > 1 + result["tolerance"]


def test_failed_replay_queries_flag_the_check(encoder_small: ModelHandle) -> None:
    result = _replay(encoder_small, FailingRunner(), count=32)
    assert result["flagged"]
    assert "replay-check queries failed" in result["reason"]
    assert "injected failure" in result["errors"][0]
