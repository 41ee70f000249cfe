"""single-stream: one query at a time, closed loop; metric p90 latency (MLPerf)."""

from __future__ import annotations

from lab.bench.engine import QuerySource, Segment
from lab.bench.metrics import Metric, latency_metric, samples_per_s_metric
from lab.bench.scenarios.common import BenchContext
from lab.bench.scenarios.registry import Earlier, Result, Scenario, register
from lab.bench.target import Target

NAME = "single-stream"


def run(context: BenchContext, earlier: Earlier) -> Result:
    rounds = context.rounds
    duration = context.config.duration_s / rounds
    min_queries = -(-context.config.min_queries // rounds)
    rules = context.rules(NAME)
    latency: dict[str, float | None] = {}
    for role in context.roles():
        with context.targets[role].open() as target:
            latency[role] = context.warm_up(target, f"{NAME}-{role}")

    def measure(role: str, target: Target, round_index: int) -> tuple[Segment, QuerySource]:
        with context.progress.phase(f"{NAME} {role} round {round_index + 1}", duration):
            return context.closed_segment(
                target,
                f"{NAME}-{role}",
                1,
                duration,
                min_queries,
                context.keep_outputs(role),
                latency[role],
                (NAME, rules),
            )

    return context.finish(NAME, context.alternate(measure), rules)


def metrics(result: Result) -> list[Metric]:
    return [
        latency_metric(result, 50.0),
        latency_metric(result, 90.0, primary=True),
        latency_metric(result, 99.0),
        samples_per_s_metric(result),
    ]


SCENARIO = register(Scenario(NAME, run, metrics))
