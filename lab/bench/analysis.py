"""Turn raw segments into a scenario result: percentiles, throughput, splits, windows, and a
VALID/INVALID verdict with every reason spelled out.

Validity rules (MLPerf LoadGen and perf_analyzer):
- warm-up queries are never part of a segment;
- the timed run must last `min_duration_s` and issue `min_queries` queries (offline: samples);
- a percentile is only claimed when enough queries were seen: 64 for p90 and 662 for p99
  (MLPerf's early-stopping rule of thumb: about 6.6 queries beyond the percentile; the same
  rule gives 132 for p95 and 6,620 for p99.9). A scenario whose own metric (single-stream
  p90, server p99) cannot be claimed is INVALID;
- stability (perf_analyzer): the run is cut into windows of min_duration_s / `windows`
  seconds; the last three must agree within `stability_tolerance` ((max - min) / mean) on
  throughput (closed-loop scenarios and offline) and on the p50 latency of the queries that
  completed in them (not offline, where latency is time-to-completion of a burst), unless
  the difference is within 3 standard errors of the windows' own sampling noise. Server
  throughput is set by its arrival schedule, so only its p50 is checked. Closed-loop and
  offline runs keep measuring (up to twice the minimum duration) until their windows agree;
- server: p99 latency (from the scheduled arrival) must meet the model's SLO;
- any failed query makes the run INVALID (a failure is never silently dropped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lab.bench.engine import Segment
from lab.bench.histogram import LatencyHistogram
from lab.bench.stats import percentile_interval, throughput_interval

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
# Queries needed before a percentile may be claimed (MLPerf: 64 for p90, 662 for p99).
MIN_QUERIES_FOR_PERCENTILE = {50.0: 1, 90.0: 64, 95.0: 132, 99.0: 662, 99.9: 6620}
SCENARIO_PERCENTILE = {"single-stream": 90.0, "server": 99.0}
CLOSED_LOOP = ("single-stream", "sweep")
STABLE_WINDOWS = 3


def pkey(q: float) -> str:
    """50 -> "p50", 99.9 -> "p99_9" (a JSON-friendly key)."""
    return "p" + f"{q:g}".replace(".", "_")


@dataclass(frozen=True)
class Rules:
    """What a scenario must satisfy to be VALID."""

    min_duration_s: float = 10.0
    min_queries: int = 100
    slo_ms: float | None = None
    windows: int = 5
    stability_tolerance: float = 0.15
    check_stability: bool = True
    require_claim: bool = True  # the scenario's own percentile must be claimable

    @property
    def window_s(self) -> float:
        """Stability windows are this long: the minimum duration split into `windows`."""
        return self.min_duration_s / self.windows if self.windows else 0.0


def _ms(ns: float) -> float | None:
    return None if ns is None or math.isnan(ns) else round(ns / 1e6, 6)


def latency_summary(hist: LatencyHistogram) -> dict[str, Any]:
    """min/mean/max and 50/90/95/99/99.9 in ms, each percentile with its `claimed` flag."""
    percentiles = {}
    for q in PERCENTILES:
        percentiles[pkey(q)] = {
            "ms": _ms(hist.percentile_ns(q)),
            "claimed": hist.count >= MIN_QUERIES_FOR_PERCENTILE[q],
            "min_queries": MIN_QUERIES_FOR_PERCENTILE[q],
        }
    return {
        "count": hist.count,
        "min_ms": _ms(hist.min_ns) if hist.count else None,
        "mean_ms": _ms(hist.mean_ns),
        "max_ms": _ms(hist.max_ns) if hist.count else None,
        "percentiles": percentiles,
    }


def split_summary(values_ns: np.ndarray) -> dict[str, float | None]:
    """mean/p50/p99 (ms) of a per-query split such as queue or compute time."""
    if values_ns.size == 0:
        return {"mean_ms": None, "p50_ms": None, "p99_ms": None, "max_ms": None}
    p50, p99 = np.percentile(values_ns, [50, 99], method="inverted_cdf")
    return {
        "mean_ms": _ms(float(values_ns.mean())),
        "p50_ms": _ms(float(p50)),
        "p99_ms": _ms(float(p99)),
        "max_ms": _ms(float(values_ns.max())),
    }


def histogram_of(values_ns: np.ndarray) -> LatencyHistogram:
    hist = LatencyHistogram()
    hist.record_many(values_ns)
    return hist


@dataclass
class Pooled:
    """Several segments of one scenario (one target) pooled into one measurement."""

    segments: list[Segment]

    @property
    def queries(self) -> int:
        return sum(s.queries for s in self.segments)

    @property
    def samples(self) -> int:
        return int(sum(int(s.samples.sum()) for s in self.segments))

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.segments)

    @property
    def errors(self) -> list[str]:
        return [e for s in self.segments for e in s.errors]

    @property
    def duration_s(self) -> float:
        return sum(s.duration_ns for s in self.segments) / 1e9

    def concat(self, attribute: str, ok_only: bool = True) -> np.ndarray:
        parts = []
        for s in self.segments:
            values = getattr(s, attribute)
            parts.append(values[s.ok] if ok_only else values)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def latency_ns(self) -> np.ndarray:
        return np.concatenate([s.latency_ns for s in self.segments])

    def issue_lag_ns(self) -> np.ndarray:
        return np.concatenate([s.issue_lag_ns for s in self.segments])

    def completions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gap_ns, samples, latency_ns) per successful query, in completion order."""
        gaps, samples, latency = [], [], []
        for s in self.segments:
            g, n = s.completion_gaps()
            done = s.done_ns[s.ok]
            order = np.argsort(done, kind="stable")
            gaps.append(g)
            samples.append(n)
            latency.append((done - s.scheduled_ns[s.ok])[order])
        if not gaps:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        return np.concatenate(gaps), np.concatenate(samples), np.concatenate(latency)


def windows(segments: Sequence[Segment], window_s: float) -> list[dict[str, Any]]:
    """Consecutive windows of `window_s` seconds from each segment's start (a partial last
    window is dropped): samples completed per second and the p50 latency of the queries that
    completed in the window, each with its standard error (`*_se`) from the window's own
    completions."""
    found: list[dict[str, Any]] = []
    width = int(window_s * 1e9)
    if width <= 0:
        return found
    for segment in segments:
        ok = segment.ok
        order = np.argsort(segment.done_ns[ok], kind="stable")
        done = segment.done_ns[ok][order]
        latency = (done - segment.scheduled_ns[ok][order]).astype(np.float64)
        samples = segment.samples[ok][order]
        k = 0
        while segment.t0_ns + (k + 1) * width <= segment.end_ns:
            low = segment.t0_ns + k * width
            first, last = np.searchsorted(done, [low, low + width])
            count = int(last - first)
            rate = float(samples[first:last].sum()) / window_s
            window: dict[str, Any] = {
                "start_s": k * window_s,
                "queries": count,
                "samples_per_s": rate,
                "samples_per_s_se": None,
                "p50_ms": None,
                "p50_ms_se": None,
            }
            if count:
                part = np.sort(latency[first:last])
                window["p50_ms"] = float(part[(count - 1) // 2]) / 1e6
                # Median SE ~ half the spread between the ranks n/2 -+ sqrt(n)/2.
                half = 0.5 * math.sqrt(count)
                lo_rank = max(0, int(count / 2 - half))
                hi_rank = min(count - 1, int(math.ceil(count / 2 + half)))
                window["p50_ms_se"] = float(part[hi_rank] - part[lo_rank]) / 2e6
            if count >= 2:
                # Counting-process noise: SE(rate) = rate * CV(gaps) / sqrt(n).
                gaps = np.diff(done[first:last]).astype(np.float64)
                cv = float(gaps.std() / gaps.mean()) if gaps.mean() > 0 else 0.0
                window["samples_per_s_se"] = rate * cv / math.sqrt(count)
            found.append(window)
            k += 1
    return found


def is_stable(scenario: str, segments: Sequence[Segment], rules: Rules) -> bool:
    """The stability verdict alone (used to decide when a run may stop)."""
    return bool(stability(scenario, windows(segments, rules.window_s), rules)[0]["stable"])


NOISE_Z = 3.0


def _disagreement(last: Sequence[dict[str, Any]], key: str) -> tuple[float, bool]:
    """(relative spread, whether the windows' own noise explains it) for one metric."""
    values = [w[key] for w in last]
    if any(v is None for v in values):
        return math.inf, False  # a window without completions: the system stalled
    mean = float(np.mean(values))
    spread = (max(values) - min(values)) / mean if mean > 0 else math.inf
    found = [w.get(f"{key}_se") for w in last]
    if any(e is None for e in found) or not math.isfinite(spread):
        return spread, False
    errors = [float(e) for e in found if e is not None]
    high, low = int(np.argmax(values)), int(np.argmin(values))
    noise = NOISE_Z * math.hypot(errors[high], errors[low])
    return spread, max(values) - min(values) <= noise


def stability(
    scenario: str, found: list[dict[str, Any]], rules: Rules
) -> tuple[dict[str, Any], list[str]]:
    """The stability verdict over the last three windows and the reasons it failed.

    Windows disagree when their spread exceeds the tolerance AND is more than the windows'
    own sampling noise explains (3 standard errors): heavy-tailed per-query costs, such as
    padded batches, make short windows noisy without the system drifting."""
    checks = []
    if scenario != "server":
        checks.append(("samples_per_s", "throughput"))
    if scenario != "offline":
        checks.append(("p50_ms", "p50 latency"))
    verdict: dict[str, Any] = {
        "windows": found,
        "tolerance": rules.stability_tolerance,
        "checked": [key for key, _ in checks],
        "spread": {},
        "stable": True,
    }
    reasons: list[str] = []
    if not rules.check_stability:
        verdict["checked"] = []
        return verdict, reasons
    if len(found) < STABLE_WINDOWS:
        verdict["stable"] = False
        reasons.append(
            f"too few completions for the stability check ({len(found)} windows, "
            f"{STABLE_WINDOWS} needed)"
        )
        return verdict, reasons
    last = found[-STABLE_WINDOWS:]
    for key, label in checks:
        spread, explained = _disagreement(last, key)
        verdict["spread"][key] = spread
        if spread > rules.stability_tolerance and not explained:
            verdict["stable"] = False
            values = ", ".join("-" if w[key] is None else f"{w[key]:.4g}" for w in last)
            reasons.append(
                f"unstable: {label} in the last {STABLE_WINDOWS} windows varies by "
                f"{spread:.0%} ({values}), more than the {rules.stability_tolerance:.0%} "
                "tolerance and more than their sampling noise"
            )
    return verdict, reasons


def summarize(
    scenario: str, segments: list[Segment], rules: Rules, seed: int = 0
) -> dict[str, Any]:
    """The result of one scenario on one target (without the audit, added later)."""
    pooled = Pooled(segments)
    latency = pooled.latency_ns()
    hist = histogram_of(latency)
    gaps, samples, _ = pooled.completions()
    duration_s = pooled.duration_s
    throughput = throughput_interval(gaps, samples, seed=seed)
    result: dict[str, Any] = {
        "scenario": scenario,
        "queries": pooled.queries,
        "samples": pooled.samples,
        "failed": pooled.failed,
        "errors": pooled.errors[:10],
        "duration_s": duration_s,
        "throughput": {
            "queries_per_s": pooled.queries / duration_s if duration_s > 0 else 0.0,
            "samples_per_s": throughput.value,
            "samples_per_s_ci": [throughput.low, throughput.high],
        },
        "latency": latency_summary(hist),
        "latency_ci": {},
        "queue": split_summary(pooled.concat("queue_ns")),
        "compute": split_summary(pooled.concat("compute_ns")),
        "issue_lag": split_summary(pooled.issue_lag_ns()),
        "batch_size": _batch_summary(pooled.concat("batch_size")),
        "histogram": hist.to_dict(),
    }
    for q in (50.0, 90.0, 99.0):
        interval = percentile_interval(hist, q, seed=seed)
        result["latency_ci"][pkey(q)] = [_ms(interval.low), _ms(interval.high)]
    reasons: list[str] = []
    warnings: list[str] = []
    if duration_s < rules.min_duration_s:
        reasons.append(
            f"ran {duration_s:.2f} s, less than the minimum duration of {rules.min_duration_s:g} s"
        )
    counted = pooled.samples if scenario == "offline" else pooled.queries
    unit = "samples" if scenario == "offline" else "queries"
    if counted < rules.min_queries:
        reasons.append(f"{counted} {unit}, fewer than the minimum of {rules.min_queries}")
    if pooled.failed:
        first = f" (first: {pooled.errors[0]})" if pooled.errors else ""
        reasons.append(f"{pooled.failed} of {pooled.queries} queries failed{first}")
    claim = SCENARIO_PERCENTILE.get(scenario)
    if claim is not None and rules.require_claim:
        needed = MIN_QUERIES_FOR_PERCENTILE[claim]
        if hist.count < needed:
            reasons.append(
                f"too few queries for a {pkey(claim)} claim: {hist.count} measured, "
                f"{needed} needed (MLPerf early-stopping rule)"
            )
    if scenario == "server" and rules.slo_ms is not None and hist.count:
        p99_ms = hist.percentile_ns(99.0) / 1e6
        if p99_ms > rules.slo_ms:
            reasons.append(
                f"p99 latency {p99_ms:.2f} ms exceeds the SLO of {rules.slo_ms:g} ms "
                "(measured from each query's scheduled arrival)"
            )
    found = windows(segments, rules.window_s)
    verdict, unstable = stability(scenario, found, rules)
    result["stability"] = verdict
    reasons.extend(unstable)
    if scenario == "server":
        lag = pooled.issue_lag_ns()
        if lag.size and np.percentile(lag, 99) > 1e6:
            warnings.append(
                f"the load generator issued late: p99 issue lag "
                f"{np.percentile(lag, 99) / 1e6:.2f} ms (latency still counts from the schedule)"
            )
    met = {
        "min duration": duration_s >= rules.min_duration_s,
        "min queries": counted >= rules.min_queries,
        "no failed queries": not pooled.failed,
    }
    if claim is not None and rules.require_claim:
        met[f"{pkey(claim)} claim"] = hist.count >= MIN_QUERIES_FOR_PERCENTILE[claim]
    if scenario == "server" and rules.slo_ms is not None and hist.count:
        met["p99 within SLO"] = hist.percentile_ns(99.0) / 1e6 <= rules.slo_ms
    met["stable"] = not unstable
    result["validity"] = {
        "valid": not reasons,
        "reasons": reasons,
        "warnings": warnings,
        "rules": met,
    }
    return result


def _batch_summary(sizes: np.ndarray) -> dict[str, Any]:
    known = sizes[sizes > 0]
    if known.size == 0:
        return {"mean": None, "max": None, "distribution": {}}
    values, counts = np.unique(known, return_counts=True)
    return {
        "mean": float(known.mean()),
        "max": int(known.max()),
        "distribution": {str(int(v)): int(c) for v, c in zip(values, counts)},
    }


def add_reason(result: dict[str, Any], reason: str) -> None:
    """Mark a summarised scenario INVALID for an extra reason (audit, duplicates...)."""
    result["validity"]["reasons"].append(reason)
    result["validity"]["valid"] = False
