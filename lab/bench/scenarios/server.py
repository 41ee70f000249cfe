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


# A server run cannot sustain more than the target completes in a burst (offline is the
# best case); above this multiple of the burst rate its result could only be INVALID.
CEILING_SAFETY = 2.0
PROBE_MAX_QUERIES = 2048


def run(context: BenchContext, earlier: Earlier) -> Result:
    qps = context.config.qps
    if qps is None:
        raise ConfigError("the server scenario needs --qps (or use find-peak to search for it)")
    check_reachable(context, float(qps))
    return measure(context, float(qps))


def burst_qps(context: BenchContext) -> tuple[float, int] | None:
    """(queries/s, queries) of a short burst on the candidate: every query issued at once,
    batched up to the batcher's limit, after a warm-up. None when no query succeeded (the
    run itself then reports the failures)."""
    max_batch = context.config.batching.max_batch_size or context.handle.config.max_batch_size
    count = int(min(max(64, 4 * max_batch), PROBE_MAX_QUERIES))
    with context.targets[CANDIDATE].open() as target:
        context.warm_up(target, f"{NAME}-probe")
        with context.progress.phase(f"{NAME}: probing what the target can serve", 0):
            segment, _ = context.offline_segment(target, f"{NAME}-probe", count, 1, False)
    ok = int(segment.ok.sum())
    if ok == 0 or segment.duration_ns <= 0:
        return None
    return ok / (segment.duration_ns / 1e9), count


def check_reachable(context: BenchContext, qps: float) -> None:
    """ConfigError, before the schedule is built, for a qps more than CEILING_SAFETY times
    what the target completes in a burst: such a run could only queue up and fail."""
    probe = burst_qps(context)
    if probe is None:
        return
    rate, count = probe
    ceiling = rate * CEILING_SAFETY
    if qps > ceiling:
        raise ConfigError(
            f"--qps {qps:g} is beyond what this target can serve: a burst of {count} queries "
            f"completed at {rate:,.0f} queries/s (the best case, batched), so a server run "
            f"above {ceiling:,.0f} qps ({CEILING_SAFETY:g}x that) could only be INVALID; "
            f"lower --qps, or use --scenario find-peak to search for the peak"
        )


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
