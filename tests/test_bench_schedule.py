"""Arrival schedules: the Poisson process has the requested rate and shape."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from lab.bench.schedule import poisson_schedule, uniform_schedule, wait_until
from lab.errors import ConfigError


@pytest.mark.parametrize("rate_qps", [50.0, 1_000.0, 20_000.0])
def test_poisson_schedule_has_the_requested_rate(rate_qps: float) -> None:
    n = 40_000
    offsets = poisson_schedule(rate_qps, n, seed=5)
    gaps = np.diff(np.concatenate([[0], offsets])) / 1e9
    mean_gap = 1 / rate_qps
    # The mean of n exponential gaps has standard deviation mean/sqrt(n): 5 sigma bounds.
    assert abs(gaps.mean() - mean_gap) < 5 * mean_gap / math.sqrt(n)
    # Exponential gaps: coefficient of variation 1, P(gap < mean) = 1 - 1/e.
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05
    share = (gaps < mean_gap).mean()
    p = 1 - math.exp(-1)
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)
    # Counts in 1 s buckets are Poisson: variance about equal to the mean.
    seconds = (offsets // 1_000_000_000).astype(np.int64)
    counts = np.bincount(seconds)[:-1]  # drop the partial last second
    if counts.size >= 20:
        assert 0.6 < counts.var() / counts.mean() < 1.6


def test_a_wrong_rate_fails_the_same_bounds() -> None:
    offsets = poisson_schedule(1000.0, 40_000, seed=5)
    gaps = np.diff(np.concatenate([[0], offsets])) / 1e9
    wrong_mean = 1 / 1050.0  # a 5% error in rate is far outside the bound
    assert abs(gaps.mean() - wrong_mean) > 5 * wrong_mean / math.sqrt(40_000)


def test_schedule_is_deterministic_per_seed_and_sorted() -> None:
    a = poisson_schedule(100.0, 1000, seed=1)
    assert np.array_equal(a, poisson_schedule(100.0, 1000, seed=1))
    assert not np.array_equal(a, poisson_schedule(100.0, 1000, seed=2))
    assert (np.diff(a) >= 0).all() and a[0] > 0


def test_uniform_schedule_is_evenly_spaced() -> None:
    offsets = uniform_schedule(1000.0, 10)
    assert np.diff(offsets).tolist() == [1_000_000] * 9


def test_bad_rates_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="positive QPS"):
        poisson_schedule(0.0, 10, 1)
    with pytest.raises(ConfigError, match="at least one query"):
        poisson_schedule(10.0, 0, 1)


def test_wait_until_never_returns_early() -> None:
    for delay_ns in (0, 50_000, 300_000, 2_000_000):
        deadline = time.perf_counter_ns() + delay_ns
        returned = wait_until(deadline)
        assert returned >= deadline
        assert time.perf_counter_ns() >= deadline
