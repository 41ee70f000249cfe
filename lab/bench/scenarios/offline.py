"""offline: every sample available at once, issued in batches of `batch_size`; metric
samples/s (MLPerf). Bursts are sized from a warm-up burst's throughput."""

from __future__ import annotations

from lab.bench.analysis import is_stable
from lab.bench.engine import QuerySource, Segment
from lab.bench.metrics import Metric, samples_per_s_metric
from lab.bench.scenarios.common import CANDIDATE, BenchContext
from lab.bench.scenarios.registry import Earlier, Result, Scenario, register
from lab.bench.target import Target

NAME = "offline"
MAX_TOP_UPS = 6


def batch_size(context: BenchContext) -> int:
    """--batch-size, else the model's smallest preferred batch size that fits the limit."""
    batching = context.config.batching
    if batching.batch_size:
        return batching.batch_size
    model = context.handle.config
    top = batching.max_batch_size or model.max_batch_size
    preferred = batching.preferred_batch_sizes or list(model.preferred_batch_sizes)
    fitting = [p for p in preferred if p <= top]
    return min(fitting) if fitting else top


def run(context: BenchContext, earlier: Earlier) -> Result:
    config = context.config
    batch = batch_size(context)
    duration = config.duration_s / context.rounds
    throughput: dict[str, float] = {}
    for role in context.roles():
        with context.targets[role].open(max_batch_size=batch, offline=True) as target:
            warm = max(config.warmup_queries, 4 * batch)
            segment, _ = context.offline_segment(
                target, f"warmup-{NAME}-{role}", warm, batch, False
            )
            span = segment.duration_ns / 1e9
            throughput[role] = segment.samples.sum() / span if span > 0 else 1000.0
    min_samples = -(-config.min_queries // context.rounds)

    def measure(role: str, target: Target, round_index: int) -> tuple[Segment, QuerySource]:
        count = max(min_samples, int(throughput[role] * duration * 1.2))
        with context.progress.phase(
            f"{NAME} {role} round {round_index + 1}: {count} samples, batch {batch}", duration
        ):
            return context.offline_segment(
                target, f"{NAME}-{role}", count, batch, context.keep_outputs(role)
            )

    measured = context.alternate(measure, max_batch_size=batch, offline=True)
    # A burst that finished early (the warm-up overestimated the speed) is topped up with
    # further bursts until the minimum duration is reached; like the closed-loop
    # scenarios, an unstable measurement gets more bursts, up to twice the duration.
    rules = context.rules(NAME)
    top_ups = 0
    while top_ups < MAX_TOP_UPS:
        segments = [s for s, _ in measured[CANDIDATE]]
        done_s = sum(s.duration_ns for s in segments) / 1e9
        if done_s >= config.duration_s and (
            is_stable(NAME, segments, rules) or done_s >= 2 * config.duration_s
        ):
            break
        last = segments[-1]
        rate = last.samples.sum() / max(last.duration_ns / 1e9, 1e-9)
        wanted_s = max(config.duration_s - done_s, rules.window_s * 2)
        count = max(batch, int(rate * wanted_s * 1.2))
        top_ups += 1
        with (
            context.progress.phase(f"{NAME} top-up {top_ups}: {count} samples", 0),
            context.targets[CANDIDATE].open(max_batch_size=batch, offline=True) as target,
        ):
            measured[CANDIDATE].append(
                context.offline_segment(
                    target, f"{NAME}-{CANDIDATE}", count, batch, context.keep_outputs(CANDIDATE)
                )
            )
    result = context.finish(NAME, measured, rules)
    result["batch_size_requested"] = batch
    result["top_up_bursts"] = top_ups
    return result


def metrics(result: Result) -> list[Metric]:
    return [samples_per_s_metric(result, primary=True)]


SCENARIO = register(Scenario(NAME, run, metrics))
