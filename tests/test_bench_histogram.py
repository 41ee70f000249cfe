"""The latency histogram: percentiles against numpy, exact merges, serialisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.bench.histogram import LatencyHistogram, bucket_bounds, bucket_index
from lab.bench.stats import percentile_interval, ratio_interval, throughput_interval

QS = (0.1, 1, 10, 50, 90, 95, 99, 99.9, 100)


def _hist(values: np.ndarray, unit_ns: int = 1000) -> LatencyHistogram:
    h = LatencyHistogram(unit_ns)
    h.record_many(values)
    return h


def _assert_close_to_numpy(h: LatencyHistogram, values: np.ndarray) -> None:
    for q in QS:
        exact = float(np.percentile(values, q, method="inverted_cdf"))
        got = h.percentile_ns(q)
        # Within the width of the bucket that holds the exact value (3 significant digits).
        assert abs(got - exact) <= h.resolution_ns(exact), (q, got, exact)


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: rng.lognormal(14, 1.2, 50_000),  # ~1 ms median, long tail
        lambda rng: rng.exponential(2e5, 20_000),  # sub-ms service times
        lambda rng: rng.uniform(1e3, 5e9, 10_000),  # 1 us .. 5 s
        lambda rng: np.concatenate([np.full(990, 1e6), np.full(10, 3e8)]),  # a stalled tail
    ],
)
def test_percentiles_match_numpy_within_bucket_resolution(draw) -> None:
    values = draw(np.random.default_rng(7)).astype(np.int64)
    h = _hist(values)
    _assert_close_to_numpy(h, values)
    assert h.min_ns == values.min() and h.max_ns == values.max()
    assert h.mean_ns == pytest.approx(values.mean())
    assert h.count == values.size


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**11), min_size=1, max_size=300))
def test_percentiles_on_arbitrary_data(values: list[int]) -> None:
    array = np.array(values, dtype=np.int64)
    _assert_close_to_numpy(_hist(array), array)


def test_a_wrong_percentile_would_be_caught_by_the_comparison() -> None:
    # The tolerance is one bucket: a percentile off by a few buckets fails the check.
    values = np.arange(1, 100_001, dtype=np.int64) * 1000
    h = _hist(values)
    exact = float(np.percentile(values, 99, method="inverted_cdf"))
    assert abs(h.percentile_ns(99) - exact) <= h.resolution_ns(exact)
    assert abs(h.percentile_ns(98) - exact) > h.resolution_ns(exact)


def test_buckets_cover_every_value_once() -> None:
    values = np.concatenate([np.arange(0, 200_000), np.array([2**40, 2**45 + 12345])])
    index = bucket_index(values)
    low, high = bucket_bounds(index)
    assert (low <= values).all() and (values <= high).all()
    assert (np.diff(index[:200_000]) >= 0).all()  # monotone
    width = high - low + 1
    big = values >= 2048
    assert (width[big] <= values[big] / 1024 + 1).all()  # 3 significant digits


def test_merge_is_exactly_the_histogram_of_all_values() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.lognormal(12 + i, 1.0, 5_000).astype(np.int64) for i in range(4)]
    merged = LatencyHistogram.merged(_hist(p) for p in parts)
    whole = _hist(np.concatenate(parts))
    assert merged == whole
    assert merged.percentile_ns(99) == whole.percentile_ns(99)


def test_merge_refuses_different_units() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        _hist(np.array([5000]), 1000).merge(_hist(np.array([5000]), 1))


def test_round_trip_through_the_sparse_form() -> None:
    h = _hist(np.random.default_rng(1).lognormal(13, 2, 3000).astype(np.int64))
    again = LatencyHistogram.from_dict(h.to_dict())
    assert again == h
    broken = h.to_dict()
    broken["count"] += 1
    with pytest.raises(ValueError, match="do not add up"):
        LatencyHistogram.from_dict(broken)


def test_empty_histogram_has_no_percentiles() -> None:
    h = LatencyHistogram()
    assert np.isnan(h.percentile_ns(50))
    assert h.cdf() == []


def test_bootstrap_interval_covers_the_true_percentile() -> None:
    rng = np.random.default_rng(11)
    values = rng.exponential(1e6, 20_000).astype(np.int64)  # true median ln2 * 1 ms
    interval = percentile_interval(_hist(values), 50)
    assert interval.low < 1e6 * np.log(2) < interval.high
    assert interval.high - interval.low < 0.1 * interval.value


def test_throughput_interval_and_ratio() -> None:
    gaps = np.full(1000, 1_000_000, dtype=np.int64)  # one sample per ms
    samples = np.ones(1000, dtype=np.int64)
    interval = throughput_interval(gaps, samples)
    assert interval.value == pytest.approx(1000.0)
    assert interval.low <= 1000.0 <= interval.high
    draws = np.full(100, 2.0)
    assert ratio_interval(draws, np.ones(100), 2.0).contains(2.0)
