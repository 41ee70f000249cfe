"""sweep: closed-loop concurrency levels (perf_analyzer's --concurrency-range); one
summary per level, throughput and p99 per level as metrics."""

from __future__ import annotations

from lab.bench.config import parse_concurrency
from lab.bench.engine import QuerySource, Segment
from lab.bench.metrics import Metric, latency_metric, metric
from lab.bench.scenarios.common import BenchContext, merge_audits
from lab.bench.scenarios.registry import Earlier, Result, Scenario, register
from lab.bench.target import Target

NAME = "sweep"


def run(context: BenchContext, earlier: Earlier) -> Result:
    levels = [
        measure_level(context, level) for level in parse_concurrency(context.config.concurrency)
    ]
    reasons = [
        f"concurrency {r['concurrency']}: {reason}"
        for r in levels
        for reason in r["validity"]["reasons"]
    ]
    return {
        "scenario": NAME,
        "levels": levels,
        "validity": {"valid": not reasons, "reasons": reasons, "warnings": []},
        "audit": merge_audits([r.get("audit") for r in levels]),
    }


def measure_level(context: BenchContext, level: int) -> Result:
    duration = context.config.duration_s / context.rounds
    min_queries = -(-context.config.min_queries // context.rounds)
    rules = context.rules(NAME)
    latency: dict[str, float | None] = {}
    for role in context.roles():
        with context.targets[role].open() as target:
            latency[role] = context.warm_up(target, f"{NAME}-{level}-{role}", level)

    def measure(role: str, target: Target, round_index: int) -> tuple[Segment, QuerySource]:
        with context.progress.phase(f"{NAME} concurrency {level} {role}", duration):
            return context.closed_segment(
                target,
                f"{NAME}-{level}-{role}",
                level,
                duration,
                min_queries,
                context.keep_outputs(role),
                latency[role],
                (NAME, rules),
            )

    result = context.finish(NAME, context.alternate(measure), rules)
    result["concurrency"] = level
    return result


def metrics(result: Result) -> list[Metric]:
    found: list[Metric] = []
    for level in result["levels"]:
        c = level["concurrency"]
        throughput = level["throughput"]
        found.append(
            metric(
                f"samples_per_s@c{c}",
                throughput["samples_per_s"],
                "samples/s",
                "higher",
                throughput["samples_per_s_ci"],
            )
        )
        found.append(latency_metric(level, 99.0, f"latency_p99_ms@c{c}"))
    return found


SCENARIO = register(Scenario(NAME, run, metrics))
