"""The speed-up on each scenario's primary metric and its noise floor, on synthetic timings:
an A/A comparison reads "no difference"."""

from __future__ import annotations

import numpy as np
import pytest

from lab.bench.engine import Segment
from lab.bench.metrics import MIN_NOISE_FLOOR, speedup


def segment(rng: np.random.Generator, scale: float, queries: int = 2000) -> tuple[Segment, None]:
    """A closed-loop segment of back-to-back queries with lognormal latencies (~1 ms)."""
    latency = (rng.lognormal(0.0, 0.25, queries) * 1e6 * scale).astype(np.int64)
    scheduled = np.concatenate([[0], np.cumsum(latency)[:-1]]).astype(np.int64)
    done = scheduled + latency
    ones = np.ones(queries, np.int64)
    return (
        Segment(
            "closed",
            0,
            int(done[-1]),
            scheduled,
            scheduled.copy(),
            done,
            np.zeros(queries, np.int64),
            latency,
            ones,
            ones,
            np.ones(queries, bool),
        ),  # fmt: skip
        None,
    )


def rounds(seed: int, *scales: float) -> list[tuple[Segment, None]]:
    rng = np.random.Generator(np.random.PCG64(seed))
    return [segment(rng, s) for s in scales]


@pytest.mark.parametrize("kind", ["single-stream", "offline"])
def test_an_aa_comparison_reads_no_difference(kind: str) -> None:
    # Identical runners in two processes: 4% apart, as issue 13's A/A run measured.
    result = speedup(kind, rounds(1, 1.0, 1.0), rounds(2, 1.04, 1.04))
    assert result["within_noise"] and not result["faster"] and not result["slower"]
    assert result["noise_floor"] == pytest.approx(MIN_NOISE_FLOOR, abs=0.03)


def test_the_speedup_is_on_the_primary_metric_and_a_real_one_is_claimed() -> None:
    result = speedup("single-stream", rounds(3, 1.0, 1.0), rounds(4, 2.0, 2.0))
    assert result["metric"] == "latency_p90"
    assert result["faster"] and result["ratio"] == pytest.approx(2.0, rel=0.1)
    assert speedup("server", rounds(5, 1.0), rounds(6, 1.0))["metric"] == "latency_p99"


def test_drift_between_rounds_raises_the_noise_floor() -> None:
    # The candidate's second round ran 30% slower than its first: a 15% gain is not claimed.
    drifting = speedup("single-stream", rounds(7, 1.0, 1.3), rounds(8, 1.3, 1.3))
    assert drifting["aa_ratios"]["candidate"] == pytest.approx(1.3, rel=0.05)  # earlier faster
    assert drifting["noise_floor"] > 0.25 and drifting["within_noise"]
    steady = speedup("single-stream", rounds(7, 1.0, 1.0), rounds(8, 1.3, 1.3))
    assert steady["faster"]
