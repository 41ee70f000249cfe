"""server: open-loop Poisson arrivals at `qps`; VALID only when p99, measured from each
query's scheduled arrival, meets the SLO (MLPerf). find-peak's confirming run is a server
run too (`measure`)."""

from __future__ import annotations

from lab.bench.analysis import add_reason
from lab.bench.engine import QuerySource, Segment
from lab.bench.metrics import Metric, latency_metric, metric
from lab.bench.scenarios.common import CANDIDATE, BenchContext
from lab.bench.scenarios.registry import Earlier, Result, Scenario, register
from lab.bench.target import Target
from lab.errors import ConfigError

NAME = "server"


def run(context: BenchContext, earlier: Earlier) -> Result:
    qps = context.config.qps
    if qps is None:
        raise ConfigError("the server scenario needs --qps (or use find-peak to search for it)")
    return measure(context, float(qps))


def measure(
    context: BenchContext, qps: float, duration_s: float | None = None, min_queries: int = 0
) -> Result:
    """A full server run at `qps` for `duration_s` (default --duration-s) and at least
    `min_queries` queries (and --min-queries), with warm-up, rounds, audit."""
    config = context.config
    total = config.duration_s if duration_s is None else duration_s
    duration = total / context.rounds
    min_queries = -(-max(config.min_queries, min_queries) // context.rounds)
    for role in context.roles():
        with context.targets[role].open() as target:
            context.warm_up(target, f"{NAME}-{role}")

    def measure_role(role: str, target: Target, round_index: int) -> tuple[Segment, QuerySource]:
        with context.progress.phase(
            f"{NAME} {role} round {round_index + 1} at {qps:.1f} qps", duration
        ):
            return context.server_segment(
                target,
                f"{NAME}-{role}",
                qps,
                duration,
                min_queries,
                context.keep_outputs(role),
                abort_on_slo=True,
            )

    measured = context.alternate(measure_role)
    result = context.finish(NAME, measured, context.rules(NAME, duration_s=total))
    result["target_qps"] = qps
    for segment, _ in measured[CANDIDATE]:
        if segment.aborted:
            add_reason(result, segment.aborted)
    return result


def metrics(result: Result) -> list[Metric]:
    return latency_and_qps(result, primary_p99=True)


def latency_and_qps(result: Result, primary_p99: bool) -> list[Metric]:
    """p50, p99 and achieved QPS (shared with find-peak, whose primary is the peak)."""
    return [
        latency_metric(result, 50.0),
        latency_metric(result, 99.0, primary=primary_p99),
        metric("achieved_qps", result["throughput"]["queries_per_s"], "queries/s", "higher"),
    ]


SCENARIO = register(Scenario(NAME, run, metrics))
