"""An exactly mergeable latency histogram (HDR-style log-linear buckets).

Values are recorded in nanoseconds and stored in units of `unit_ns` (default 1 us). Values
below 2048 units get a bucket each; above that every power-of-two range is cut into 1024
equal buckets, so a bucket is never wider than 1/1024 of the values it holds (three
significant decimal digits). Two histograms with the same unit merge exactly by adding
their count arrays, which is how per-worker or per-segment latencies are combined: never
by averaging percentiles.

Percentiles follow the nearest-rank rule (numpy's `method="inverted_cdf"`): the smallest
recorded value whose cumulative count reaches q% of the total. The histogram returns the
midpoint of that value's bucket, so it is within half a bucket of the exact answer; min,
max and mean are exact (kept alongside the counts).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

SUB_BUCKET_BITS = 11  # 2048 linear buckets below the first doubling: 3 significant digits
_SUB_COUNT = 1 << SUB_BUCKET_BITS
_HALF = _SUB_COUNT >> 1


def bucket_index(units: np.ndarray) -> np.ndarray:
    """Bucket index for non-negative integer values (already in histogram units)."""
    units = np.asarray(units, dtype=np.int64)
    # bit_length via frexp is exact for values below 2**53.
    _, exponent = np.frexp(units.astype(np.float64))
    shift = np.maximum(exponent.astype(np.int64) - SUB_BUCKET_BITS, 0)
    sub = units >> shift
    return np.where(shift == 0, units, _SUB_COUNT + (shift - 1) * _HALF + (sub - _HALF))


def bucket_bounds(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest value (in units, inclusive) that land in each bucket index."""
    index = np.asarray(index, dtype=np.int64)
    linear = index < _SUB_COUNT
    shift = np.where(linear, 0, (index - _SUB_COUNT) // _HALF + 1)
    sub = np.where(linear, index, (index - _SUB_COUNT) % _HALF + _HALF)
    low = sub << shift
    high = ((sub + 1) << shift) - 1
    return low, high


class LatencyHistogram:
    """Counts of latencies in log-linear buckets, plus exact count, sum, min and max."""

    def __init__(self, unit_ns: int = 1000) -> None:
        if unit_ns < 1:
            raise ValueError("unit_ns must be at least 1")
        self.unit_ns = int(unit_ns)
        self.counts = np.zeros(_SUB_COUNT, dtype=np.int64)
        self.count = 0
        self.sum_ns = 0
        self.min_ns = 0
        self.max_ns = 0

    # ----- recording ---------------------------------------------------------------------
    def record(self, value_ns: int) -> None:
        self.record_many(np.array([value_ns], dtype=np.int64))

    def record_many(self, values_ns: Iterable[int] | np.ndarray) -> None:
        values = np.asarray(values_ns if isinstance(values_ns, np.ndarray) else list(values_ns))
        if values.size == 0:
            return
        values = np.maximum(values.astype(np.int64), 0)
        index = bucket_index(values // self.unit_ns)
        top = int(index.max())
        if top >= self.counts.size:
            self._grow(top + 1)
        np.add.at(self.counts, index, 1)
        low, high = int(values.min()), int(values.max())
        self.min_ns = low if self.count == 0 else min(self.min_ns, low)
        self.max_ns = high if self.count == 0 else max(self.max_ns, high)
        self.count += int(values.size)
        self.sum_ns += int(values.sum())

    def _grow(self, size: int) -> None:
        grown = np.zeros(max(size, self.counts.size + _HALF), dtype=np.int64)
        grown[: self.counts.size] = self.counts
        self.counts = grown

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add another histogram's counts into this one (exact). Returns self."""
        if other.unit_ns != self.unit_ns:
            raise ValueError(
                f"cannot merge histograms with units {self.unit_ns} ns and {other.unit_ns} ns"
            )
        if other.count == 0:
            return self
        if other.counts.size > self.counts.size:
            self._grow(other.counts.size)
        self.counts[: other.counts.size] += other.counts
        self.min_ns = other.min_ns if self.count == 0 else min(self.min_ns, other.min_ns)
        self.max_ns = other.max_ns if self.count == 0 else max(self.max_ns, other.max_ns)
        self.count += other.count
        self.sum_ns += other.sum_ns
        return self

    @classmethod
    def merged(
        cls, histograms: Iterable[LatencyHistogram], unit_ns: int = 1000
    ) -> LatencyHistogram:
        result = cls(unit_ns)
        for h in histograms:
            result.merge(h)
        return result

    # ----- queries -----------------------------------------------------------------------
    @property
    def mean_ns(self) -> float:
        return self.sum_ns / self.count if self.count else float("nan")

    def percentile_ns(self, q: float) -> float:
        """Nearest-rank percentile (0 < q <= 100), within half a bucket of the exact value."""
        if not 0 <= q <= 100:
            raise ValueError(f"percentile {q} is outside 0..100")
        if self.count == 0:
            return float("nan")
        rank = max(1, int(np.ceil(q / 100.0 * self.count)))
        cumulative = np.cumsum(self.counts)
        index = int(np.searchsorted(cumulative, rank))
        low, high = bucket_bounds(np.array([index]))
        mid_ns = (float(low[0]) + float(high[0]) + 1) / 2 * self.unit_ns
        # The exact extremes are known: never report outside them.
        return float(min(max(mid_ns, self.min_ns), self.max_ns))

    def resolution_ns(self, value_ns: float) -> float:
        """Width of the bucket that holds `value_ns` (the histogram's error bound there)."""
        index = bucket_index(np.array([int(value_ns) // self.unit_ns]))
        low, high = bucket_bounds(index)
        return float(high[0] - low[0] + 1) * self.unit_ns

    def cdf(self, points: int = 200) -> list[tuple[float, float]]:
        """(latency_ns, fraction <= latency) pairs for plotting, at most `points` of them."""
        if self.count == 0:
            return []
        nonzero = np.nonzero(self.counts)[0]
        cumulative = np.cumsum(self.counts[nonzero]) / self.count
        _, high = bucket_bounds(nonzero)
        values = (high + 1).astype(np.float64) * self.unit_ns
        values = np.minimum(values, self.max_ns)
        if nonzero.size > points:
            pick = np.unique(np.linspace(0, nonzero.size - 1, points).astype(int))
            values, cumulative = values[pick], cumulative[pick]
        return [(float(v), float(c)) for v, c in zip(values, cumulative)]

    # ----- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Sparse form for reports: [[bucket_index, count], ...] plus the exact stats."""
        nonzero = np.nonzero(self.counts)[0]
        return {
            "unit_ns": self.unit_ns,
            "sub_bucket_bits": SUB_BUCKET_BITS,
            "count": self.count,
            "sum_ns": self.sum_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "buckets": [[int(i), int(self.counts[i])] for i in nonzero],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        if int(data.get("sub_bucket_bits", SUB_BUCKET_BITS)) != SUB_BUCKET_BITS:
            raise ValueError("histogram was written with a different bucket layout")
        hist = cls(int(data["unit_ns"]))
        buckets = data.get("buckets", [])
        if buckets:
            index = np.array([b[0] for b in buckets], dtype=np.int64)
            top = int(index.max())
            if top >= hist.counts.size:
                hist._grow(top + 1)
            hist.counts[index] = np.array([b[1] for b in buckets], dtype=np.int64)
        hist.count = int(data["count"])
        hist.sum_ns = int(data["sum_ns"])
        hist.min_ns = int(data["min_ns"])
        hist.max_ns = int(data["max_ns"])
        if int(hist.counts.sum()) != hist.count:
            raise ValueError("histogram bucket counts do not add up to its count")
        return hist

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return self.to_dict() == other.to_dict()
