"""find-peak: MLPerf FindPeakPerformance. Bracket the highest VALID QPS with short server
steps (p99 <= SLO and no failures; doubling up or halving down, then bisection to the
search tolerance), then confirm the bracket's lower end with a full-length server run (at
least 700 queries, all validity rules, audit). A confirming run that fails steps down (see
`backoff`) and runs again, up to 4 times; the peak reported is the QPS of the run that
passed, or none.

The search starts at --qps when given, else from the single-stream p50 and the offline
throughput when those scenarios ran earlier in the run, else from its own warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lab.bench.analysis import add_reason, summarize
from lab.bench.metrics import Metric, metric
from lab.bench.scenarios import server
from lab.bench.scenarios.common import CANDIDATE, BenchContext
from lab.bench.scenarios.registry import Earlier, Result, Scenario, register

NAME = "find-peak"
FIND_PEAK_MIN_QUERIES = 700  # the confirming server run must be able to claim p99 (662)
FIND_PEAK_STEP_MIN_QUERIES = 64
FIND_PEAK_CONFIRM_ATTEMPTS = 4
AGREEMENT = 0.20  # the bracket and the confirmed peak should agree within this
# A step must be long enough to see an overload of `tolerance`: a queue growing at
# tolerance x qps adds about tolerance x step_s of waiting by the step's end, so p99 only
# crosses the SLO within a step of at least SLO / tolerance (twice that, for p99 to see it).
OVERLOAD_SLO_MULTIPLE = 2.0


def step_duration(
    base_s: float, qps: float, slo_ms: float, tolerance: float, cap_s: float
) -> float:
    """A search step's length at `qps`: --find-peak-step-s at least, long enough for as many
    queries as the confirming run needs to claim p99 and for an overload of `tolerance` to
    push p99 over the SLO, and never longer than the confirming run (`cap_s`)."""
    need = max(
        base_s,
        FIND_PEAK_MIN_QUERIES / qps,
        OVERLOAD_SLO_MULTIPLE * slo_ms / 1e3 / max(tolerance, 1e-3),
    )
    return min(need, max(cap_s, base_s))


def agreement(found: dict[str, Any], result: Result) -> dict[str, Any]:
    """Whether the confirmed peak is within AGREEMENT of the bracket's lower end, and if
    not, why (from the confirming runs' reasons and the machine's load)."""
    low, peak = found["lower_qps"], result.get("peak_qps")
    ratio = peak / low if peak is not None and low > 0 else None
    agrees = ratio is not None and ratio >= 1 - AGREEMENT
    why = ""
    if not agrees:
        failed = [a for a in found["final_attempts"] if not a["valid"]]
        reasons = [r for a in failed for r in a.get("reasons", [])]
        busy = (result.get("telemetry") or {}).get("other_processes_cpu_cores_mean")
        parts = []
        if low <= 0:
            parts.append("no search step met the SLO")
        if any("stable" in r for r in reasons):
            parts.append("the full-length runs were unstable (their throughput or latency "
                         "windows disagreed)")  # fmt: skip
        if any("SLO" in r for r in reasons):
            parts.append("p99 missed the SLO over the full length, which the shorter steps "
                         "did not show")  # fmt: skip
        if busy is not None and busy > 0.5:
            parts.append(f"other processes used {busy:.1f} CPU cores meanwhile (not a quiet "
                         "machine)")  # fmt: skip
        why = "; ".join(parts) or "; ".join(reasons[:2]) or "no confirming run was VALID"
    return {"confirmed_over_bracket": ratio, "within": AGREEMENT, "agrees": agrees, "why": why}


def start_qps(context: BenchContext, earlier: Earlier, warm_latency_s: float | None) -> float:
    """--qps, else 0.7 / single-stream p50 (or the warm-up's), at least half of offline."""
    if context.config.qps is not None:
        return float(context.config.qps)
    latency_s = warm_latency_s or 0.01
    if "single-stream" in earlier:
        p50_ms = earlier["single-stream"]["latency"]["percentiles"]["p50"]["ms"]
        latency_s = p50_ms / 1e3 if p50_ms else latency_s
    start = 0.7 / latency_s
    offline = earlier["offline"]["throughput"]["samples_per_s"] if "offline" in earlier else None
    if offline:
        start = max(start, 0.5 * offline)
    return start


def search(
    start: float, trial: Callable[[float], bool], max_steps: int, tolerance: float
) -> tuple[float, float, int]:
    """(low, high, steps): the highest QPS that passed (0 if none) and the lowest that
    failed above it (inf if none), from `trial(qps)` calls, at most `max_steps` of them."""
    steps = 0

    def passes(qps: float) -> bool:
        nonlocal steps
        steps += 1
        return trial(qps)

    low, high = 0.0, math.inf
    qps = start
    if passes(qps):
        low = qps
        while steps < max_steps:
            qps = low * 2
            if passes(qps):
                low = qps
            else:
                high = qps
                break
    else:
        high = qps
        while steps < max_steps and qps > 1e-3:
            qps = qps / 2
            if passes(qps):
                low = qps
                break
            high = qps
    while low > 0 and math.isfinite(high) and steps < max_steps:
        if (high - low) / low <= tolerance:
            break
        middle = (low + high) / 2
        if passes(middle):
            low = middle
        else:
            high = middle
    return low, high, steps


def run(context: BenchContext, earlier: Earlier) -> Result:
    settings = context.config.find_peak
    with context.targets[CANDIDATE].open() as target:
        warm_latency_s = context.warm_up(target, NAME)
    start = start_qps(context, earlier, warm_latency_s)
    steps: list[dict[str, Any]] = []
    step_s = settings.find_peak_step_s
    # Steps are short estimates for bracketing: SLO and failures count, the p99 claim
    # (662 queries) and stability are left to the full-length run at the end.
    rules = context.rules(
        "server", duration_s=0.0, min_queries=0, check_stability=False, require_claim=False
    )
    # An overloaded step is not waited out: queries still unanswered this long after the
    # last arrival count as failures (they are already far past the SLO).
    give_up_s = max(1.0, 4 * context.slo_ms / 1e3)

    final_s = settings.final_duration_s or context.config.duration_s
    fits = context.max_prepared_queries()
    shortened: list[str] = []

    def fitting(qps: float, duration_s: float) -> float:
        """`duration_s`, shortened where that many arrivals would not fit the memory budget
        for prepared queries (a fast model's peak can be tens of thousands of qps)."""
        most_s = 0.9 * fits / qps
        if duration_s <= most_s:
            return duration_s
        shortened.append(f"{duration_s:g} s at {qps:.0f} qps shortened to {most_s:.2f} s")
        return most_s

    def trial(qps: float) -> bool:
        length_s = step_duration(step_s, qps, context.slo_ms, settings.find_peak_tolerance, final_s)
        length_s = fitting(qps, length_s)
        with (
            context.progress.phase(f"{NAME} step {len(steps) + 1} at {qps:.1f} qps", length_s),
            context.targets[CANDIDATE].open(drain=False) as target,
        ):
            segment = context.server_segment(
                target,
                f"{NAME}-step",
                qps,
                length_s,
                FIND_PEAK_STEP_MIN_QUERIES,
                False,
                give_up_after_s=give_up_s,
            )[0]
        summary = summarize("server", [segment], rules)
        valid = bool(summary["validity"]["valid"])
        steps.append(
            {
                "qps": qps,
                "valid": valid,
                "duration_s": length_s,
                "queries": summary["queries"],
                "p50_ms": summary["latency"]["percentiles"]["p50"]["ms"],
                "p99_ms": summary["latency"]["percentiles"]["p99"]["ms"],
                "achieved_qps": summary["throughput"]["queries_per_s"],
                "reasons": summary["validity"]["reasons"],
            }
        )
        return valid

    low, high, _ = search(start, trial, settings.find_peak_max_steps, settings.find_peak_tolerance)
    attempts: list[dict[str, Any]] = []
    found: dict[str, Any] = {
        "start_qps": start,
        "lower_qps": low,
        "upper_qps": None if math.isinf(high) else high,
        "tolerance": settings.find_peak_tolerance,
        "step_s": step_s,
        "steps": steps,
        "final_attempts": attempts,
    }
    if low <= 0:
        result = server.measure(
            context, min(s["qps"] for s in steps), final_s, FIND_PEAK_MIN_QUERIES
        )
        add_reason(result, "find-peak found no QPS that met the SLO")
        attempts.append({"qps": result["target_qps"], "valid": False})
    else:
        qps = low
        for attempt in range(FIND_PEAK_CONFIRM_ATTEMPTS):
            result = server.measure(context, qps, fitting(qps, final_s), FIND_PEAK_MIN_QUERIES)
            attempts.append(
                {
                    "qps": qps,
                    "valid": result["validity"]["valid"],
                    "reasons": result["validity"]["reasons"],
                }
            )
            if result["validity"]["valid"] or attempt == FIND_PEAK_CONFIRM_ATTEMPTS - 1:
                break
            qps *= backoff(result, context.slo_ms, settings.find_peak_tolerance)
    result["scenario"] = NAME
    result["peak_qps"] = result["target_qps"] if result["validity"]["valid"] else None
    found["agreement"] = agreement(found, result)
    if shortened:
        result["validity"].setdefault("warnings", []).append(
            f"runs shortened to fit {fits:,} prepared queries in memory: {'; '.join(shortened)}"
        )
    result["find_peak"] = found
    return result


def backoff(result: Result, slo_ms: float, tolerance: float) -> float:
    """How far to step down after a failed confirming run: by the search tolerance when
    it only just missed, further when p99 overshot the SLO badly (a queue that kept
    growing through a full-length run: short steps cannot see that)."""
    p99 = result["latency"]["percentiles"]["p99"]["ms"] or math.inf
    overshoot = p99 / slo_ms
    if overshoot <= 2:
        return 1 - tolerance
    return 0.7 if overshoot <= 10 else 0.5


def metrics(result: Result) -> list[Metric]:
    upper = result["find_peak"]["upper_qps"]
    peak = result.get("peak_qps")
    interval = [peak, upper if upper is not None else peak] if peak is not None else None
    peak_metric = metric("peak_qps", peak, "queries/s", "higher", interval, primary=True)
    return [peak_metric, *server.latency_and_qps(result, primary_p99=False)]


SCENARIO = register(Scenario(NAME, run, metrics))
