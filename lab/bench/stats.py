"""Bootstrap confidence intervals for latency percentiles, throughput and speed-up ratios.

Latency percentiles are resampled from the histogram: drawing n values with replacement from
the measured values is a multinomial draw over the histogram's buckets, which costs the same
for ten thousand queries as for ten million. Throughput is resampled in blocks of
consecutive completions (a block bootstrap), because completions of one batch arrive
together and are not independent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lab.bench.histogram import LatencyHistogram, bucket_bounds

RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
        }


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _bounds(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def percentile_draws(
    hist: LatencyHistogram, q: float, resamples: int = RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Bootstrap distribution of the q-th percentile (ns) from a histogram."""
    if hist.count == 0:
        return np.full(resamples, np.nan)
    index = np.nonzero(hist.counts)[0]
    weights = hist.counts[index] / hist.count
    low, high = bucket_bounds(index)
    mids = np.clip((low + high + 1) / 2 * hist.unit_ns, hist.min_ns, hist.max_ns)
    draws = _rng(seed).multinomial(hist.count, weights, size=resamples)  # (R, K)
    cumulative = np.cumsum(draws, axis=1)
    rank = max(1, int(np.ceil(q / 100 * hist.count)))
    position = (cumulative < rank).sum(axis=1)
    return mids[np.minimum(position, index.size - 1)].astype(np.float64)


def percentile_interval(
    hist: LatencyHistogram,
    q: float,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    draws = percentile_draws(hist, q, resamples, seed)
    low, high = _bounds(draws, confidence)
    return Interval(hist.percentile_ns(q), low, high, confidence)


def _blocks(gaps_ns: np.ndarray, samples: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    n = gaps_ns.size
    blocks = max(1, min(blocks, n))
    edges = np.linspace(0, n, blocks + 1).astype(int)
    time_ns = np.add.reduceat(gaps_ns.astype(np.float64), edges[:-1]) if n else np.zeros(0)
    count = np.add.reduceat(samples.astype(np.float64), edges[:-1]) if n else np.zeros(0)
    return time_ns, count


def throughput_draws(
    gaps_ns: np.ndarray,
    samples: np.ndarray,
    resamples: int = RESAMPLES,
    blocks: int = 40,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap distribution of samples/s from completion gaps (block bootstrap)."""
    time_ns, count = _blocks(gaps_ns, samples, blocks)
    if time_ns.size == 0 or time_ns.sum() <= 0:
        return np.full(resamples, np.nan)
    pick = _rng(seed).integers(0, time_ns.size, size=(resamples, time_ns.size))
    total_time = time_ns[pick].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total_time > 0, count[pick].sum(axis=1) / (total_time / 1e9), np.nan)


def throughput_interval(
    gaps_ns: np.ndarray,
    samples: np.ndarray,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    total = float(gaps_ns.sum())
    value = float(samples.sum()) / (total / 1e9) if total > 0 else float("nan")
    low, high = _bounds(throughput_draws(gaps_ns, samples, resamples, seed=seed), confidence)
    return Interval(value, low, high, confidence)


def ratio_interval(
    numerator: np.ndarray, denominator: np.ndarray, value: float, confidence: float = CONFIDENCE
) -> Interval:
    """An interval for numerator/denominator from two independent bootstrap distributions."""
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = numerator / denominator
    low, high = _bounds(draws, confidence)
    return Interval(value, low, high, confidence)
