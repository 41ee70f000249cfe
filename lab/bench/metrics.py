"""The metrics a comparison reads, each with its declared direction, and the speed-up.

Each scenario module declares its own metrics (`Scenario.metrics`) with the builders here;
`scenario_metrics` adds the speed-up against the same-run baseline. `speedup` computes that
ratio, with a bootstrap interval, from the raw segments of both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lab.bench.analysis import pkey
from lab.bench.engine import Segment
from lab.bench.histogram import LatencyHistogram
from lab.bench.stats import percentile_draws, ratio_interval, throughput_draws

Metric = dict[str, Any]
Segments = Sequence[tuple[Segment, object]]  # (segment, its query source) per round


def speedup(kind: str, candidate: Segments, baseline: Segments) -> dict[str, Any]:
    """Candidate vs baseline from the same run: > 1 means the candidate is faster.

    single-stream: baseline p50 / candidate p50; server: the same with p99 (same QPS);
    offline and sweep: candidate samples/s / baseline samples/s. 95% bootstrap intervals."""

    def hist(measured: Segments) -> LatencyHistogram:
        h = LatencyHistogram()
        for segment, _ in measured:
            h.record_many(segment.latency_ns)
        return h

    def gaps(measured: Segments) -> tuple[np.ndarray, np.ndarray]:
        parts = [segment.completion_gaps() for segment, _ in measured]
        return np.concatenate([g for g, _ in parts]), np.concatenate([n for _, n in parts])

    if kind in ("single-stream", "server"):
        q = 50.0 if kind == "single-stream" else 99.0
        hc, hb = hist(candidate), hist(baseline)
        value = hb.percentile_ns(q) / hc.percentile_ns(q) if hc.count and hb.count else math.nan
        interval = ratio_interval(
            percentile_draws(hb, q, seed=1), percentile_draws(hc, q, seed=2), value
        )
        metric = f"latency_{pkey(q)}"
    else:
        gc, nc = gaps(candidate)
        gb, nb = gaps(baseline)
        rate_c = nc.sum() / (gc.sum() / 1e9) if gc.sum() > 0 else math.nan
        rate_b = nb.sum() / (gb.sum() / 1e9) if gb.sum() > 0 else math.nan
        value = rate_c / rate_b if rate_b else math.nan
        interval = ratio_interval(
            throughput_draws(gc, nc, seed=1), throughput_draws(gb, nb, seed=2), value
        )
        metric = "samples_per_s"
    return {
        "metric": metric,
        "ratio": interval.value,
        "ci": [interval.low, interval.high],
        "confidence": interval.confidence,
        "faster": bool(interval.low > 1),
        "slower": bool(interval.high < 1),
        "within_noise": bool(interval.low <= 1 <= interval.high),
    }


def metric(
    name: str,
    value: float | None,
    unit: str,
    direction: str,
    ci: Sequence[float | None] | None = None,
    primary: bool = False,
) -> Metric:
    """One metric; a non-finite value becomes None, an interval with a gap is dropped."""
    clean_ci = None
    if ci is not None and all(c is not None and math.isfinite(c) for c in ci):
        clean_ci = [float(c) for c in ci if c is not None]
    return {
        "name": name,
        "value": None if value is None or not math.isfinite(value) else float(value),
        "unit": unit,
        "direction": direction,
        "ci": clean_ci,
        "primary": primary,
    }


def latency_metric(
    result: dict[str, Any], q: float, name: str | None = None, primary: bool = False
) -> Metric:
    """The q-th latency percentile of a result (with its interval), lower is better."""
    key = pkey(q)
    entry = result["latency"]["percentiles"][key]
    ci = result.get("latency_ci", {}).get(key)
    return metric(name or f"latency_{key}_ms", entry["ms"], "ms", "lower", ci, primary)


def samples_per_s_metric(result: dict[str, Any], primary: bool = False) -> Metric:
    throughput = result["throughput"]
    return metric(
        "samples_per_s",
        throughput["samples_per_s"],
        "samples/s",
        "higher",
        throughput["samples_per_s_ci"],
        primary=primary,
    )


def scenario_metrics(
    result: dict[str, Any], own: Callable[[dict[str, Any]], list[Metric]]
) -> list[Metric]:
    """The metrics a comparison reads: the scenario's own (`own(result)`, declared in its
    module), then the speed-up against the same-run baseline when there is one."""
    metrics = own(result)
    if result.get("speedup"):
        s = result["speedup"]
        metrics.append(
            metric(f"speedup_{s['metric']}", s["ratio"], "x", "higher", s["ci"], primary=False)
        )
    return metrics
