"""The metrics a comparison reads, each with its declared direction, and the speed-up.

Each scenario module declares its own metrics (`Scenario.metrics`) with the builders here;
`scenario_metrics` adds the speed-up against the same-run baseline. `speedup` computes that
ratio, with a bootstrap interval, from the raw segments of both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lab.bench.analysis import pkey
from lab.bench.engine import Segment
from lab.bench.histogram import LatencyHistogram
from lab.bench.stats import Interval, percentile_draws, ratio_interval, throughput_draws

Metric = dict[str, Any]
Segments = Sequence[tuple[Segment, object]]  # (segment, its query source) per round


# Below this the speed-up is not claimed even when the run's own A/A floor is smaller: two
# identical runners in two worker processes differed by 4% (issue 13), a systematic
# difference no round-to-round comparison of one runner can see.
MIN_NOISE_FLOOR = 0.05
PRIMARY_PERCENTILE = {"single-stream": 90.0, "server": 99.0}  # MLPerf's primary metrics


def _hist(measured: Segments) -> LatencyHistogram:
    h = LatencyHistogram()
    for segment, _ in measured:
        h.record_many(segment.latency_ns)
    return h


def _gaps(measured: Segments) -> tuple[np.ndarray, np.ndarray]:
    parts = [segment.completion_gaps() for segment, _ in measured]
    return np.concatenate([g for g, _ in parts]), np.concatenate([n for _, n in parts])


def _faster_by(kind: str, fast: Segments, slow: Segments) -> tuple[str, Interval]:
    """How much faster `fast` is than `slow` on the scenario's primary metric (> 1: faster)."""
    if kind in PRIMARY_PERCENTILE:
        q = PRIMARY_PERCENTILE[kind]
        hf, hs = _hist(fast), _hist(slow)
        value = hs.percentile_ns(q) / hf.percentile_ns(q) if hf.count and hs.count else math.nan
        interval = ratio_interval(
            percentile_draws(hs, q, seed=1), percentile_draws(hf, q, seed=2), value
        )
        return f"latency_{pkey(q)}", interval
    gf, nf = _gaps(fast)
    gs, ns = _gaps(slow)
    rate_f = nf.sum() / (gf.sum() / 1e9) if gf.sum() > 0 else math.nan
    rate_s = ns.sum() / (gs.sum() / 1e9) if gs.sum() > 0 else math.nan
    value = rate_f / rate_s if rate_s else math.nan
    interval = ratio_interval(
        throughput_draws(gf, nf, seed=1), throughput_draws(gs, ns, seed=2), value
    )
    return "samples_per_s", interval


def aa_ratios(kind: str, measured: Mapping[str, Segments]) -> dict[str, float]:
    """Per role with two or more rounds: its earlier rounds against its later ones on the
    primary metric, an A/A comparison inside the run (1.0: no drift between rounds)."""
    ratios = {}
    for role, segments in measured.items():
        half = len(segments) // 2
        if half:
            value = _faster_by(kind, segments[:half], segments[half:])[1].value
            if math.isfinite(value):
                ratios[role] = value
    return ratios


def speedup(kind: str, candidate: Segments, baseline: Segments) -> dict[str, Any]:
    """Candidate vs baseline from the same run on the scenario's primary metric: > 1 means
    the candidate is faster.

    single-stream: baseline p90 / candidate p90; server: the same with p99 (same QPS);
    offline and sweep: candidate samples/s / baseline samples/s. 95% bootstrap intervals.
    The noise floor is the larger of MIN_NOISE_FLOOR and the run's own A/A drift (each
    runner's earlier rounds against its later ones); "faster" needs the whole interval
    above 1 + floor, "slower" below 1 / (1 + floor), anything else is no difference."""
    metric_name, interval = _faster_by(kind, candidate, baseline)
    aa = aa_ratios(kind, {"candidate": candidate, "baseline": baseline})
    measured_floor = max((abs(math.log(r)) for r in aa.values() if r > 0), default=0.0)
    floor = max(math.exp(measured_floor) - 1, MIN_NOISE_FLOOR)
    faster = bool(interval.low > 1 + floor)
    slower = bool(interval.high < 1 / (1 + floor))
    return {
        "metric": metric_name,
        "ratio": interval.value,
        "ci": [interval.low, interval.high],
        "confidence": interval.confidence,
        "faster": faster,
        "slower": slower,
        "within_noise": not faster and not slower,
        "noise_floor": floor,
        "aa_ratios": aa,
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
