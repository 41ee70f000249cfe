"""The benchmark run: scenarios, audits, baseline, roofline and telemetry, as one report.

`run_bench(config)` resolves the model, loads the runner (and the baseline runner), and
for each scenario: warms up (never measured), runs the timed segments, summarises them
(lab.bench.analysis), audits a random subset of the outputs (lab.bench.audit), adds the
speed-up against the same-run baseline, the roofline attainment and telemetry. After the
scenarios, the replay check runs once. The report is a plain dict (lab.bench.report).

Scenarios (MLPerf names):
  single-stream  one query at a time; metric p90 latency
  offline        all samples issued at once, batched at `batch_size`; metric samples/s
  server         Poisson arrivals at `qps`; VALID only when p99 (from the schedule) <= SLO
  find-peak      the highest QPS that stays VALID in server, then a full server run there
  sweep          closed-loop concurrency levels (perf_analyzer's --concurrency-range)

With a baseline, every scenario alternates candidate and baseline segments in ABBA order
(C B B C ...) so that drift in the machine hits both alike, and reports the speed-up as a
ratio with a bootstrap confidence interval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np

from lab.bench.analysis import Rules, add_reason, is_stable, pkey, summarize
from lab.bench.audit import replay_check, run_audit
from lab.bench.engine import QuerySource, Segment, run_closed_loop, run_open_loop
from lab.bench.histogram import LatencyHistogram
from lab.bench.progress import Progress
from lab.bench.schedule import poisson_schedule
from lab.bench.stats import (
    percentile_draws,
    ratio_interval,
    throughput_draws,
)
from lab.bench.target import InProcessTarget, Target
from lab.bench.telemetry import Telemetry
from lab.errors import ConfigError
from lab.repository import ModelHandle
from lab.runners.base import Runner

SCENARIOS = ("single-stream", "offline", "server", "find-peak", "sweep")
MAIN_JOB_SCENARIOS = ("single-stream", "find-peak", "offline")
CANDIDATE, BASELINE = "candidate", "baseline"
FIND_PEAK_MIN_QUERIES = 700  # the confirming server run must be able to claim p99 (662)
FIND_PEAK_STEP_MIN_QUERIES = 64
FIND_PEAK_CONFIRM_ATTEMPTS = 4


@dataclass
class BenchConfig:
    """Everything that shapes a run. CLI flags are the kebab-case of these fields."""

    model: str = "encoder"
    size: str | None = None
    precision: str = "fp32"
    model_repository: str | None = None
    runner: str = "onnxruntime"
    runner_options: dict[str, Any] = field(default_factory=dict)
    target: str = "inprocess"
    scenarios: list[str] = field(default_factory=lambda: ["single-stream"])
    qps: float | None = None
    duration_s: float = 10.0
    min_queries: int = 1024
    warmup_queries: int = 32
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: list[int] | None = None
    batch_size: int | None = None
    concurrency: str = "1:4:1"
    remote_concurrency: int = 64
    baseline: str | None = None
    baseline_options: dict[str, Any] = field(default_factory=dict)
    rounds: int = 2
    audit: bool = True
    audit_fraction: float = 0.05
    audit_count: int | None = None
    replay_check: bool = True
    replay_count: int = 64
    replay_tolerance: float = 0.25
    seed: int | None = None
    slo_ms: float | None = None
    stability_windows: int = 5
    stability_tolerance: float = 0.15
    find_peak_step_s: float = 3.0
    find_peak_tolerance: float = 0.10
    find_peak_max_steps: int = 10
    final_duration_s: float | None = None
    roofline: bool = True
    telemetry: bool = True
    timeout_s: float = 60.0
    output: str = "reports"
    name: str | None = None
    html: bool = True
    main_job: bool = False

    def __post_init__(self) -> None:
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise ConfigError(
                f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}"
            )
        if not self.scenarios:
            raise ConfigError("at least one scenario is needed")
        positive = {
            "duration_s": self.duration_s,
            "rounds": self.rounds,
            "stability_windows": self.stability_windows,
            "find_peak_step_s": self.find_peak_step_s,
            "timeout_s": self.timeout_s,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{key.replace('_', '-')} must be positive, got {value}")
        if self.min_queries < 1 or self.warmup_queries < 0:
            raise ConfigError("min-queries must be >= 1 and warmup-queries >= 0")
        if not 0 <= self.audit_fraction <= 1:
            raise ConfigError(f"audit-fraction must lie in [0, 1], got {self.audit_fraction}")
        if self.audit_count is not None and self.audit_count < 1:
            raise ConfigError("audit-count must be at least 1")
        if self.qps is not None and self.qps <= 0:
            raise ConfigError(f"qps must be positive, got {self.qps}")
        if "server" in self.scenarios and self.qps is None:
            raise ConfigError("the server scenario needs --qps (or use find-peak to search for it)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch-size must be at least 1")
        if self.stability_tolerance <= 0:
            raise ConfigError("stability-tolerance must be positive")
        parse_concurrency(self.concurrency)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "config") -> BenchConfig:
        known = {f.name for f in fields(cls)}
        clean = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(clean) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        try:
            return cls(**clean)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def parse_concurrency(text: str) -> list[int]:
    """ "1:8:2" -> [1, 3, 5, 7] (start:end:step, end included); "1,2,4" -> [1, 2, 4]."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) == 2:
                parts.append(1)
            start, end, step = parts
            levels = list(range(start, end + 1, step))
        else:
            levels = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(
            f"concurrency {text!r} must look like start:end:step or a list like 1,2,4"
        ) from None
    if not levels or any(c < 1 for c in levels):
        raise ConfigError(f"concurrency {text!r} gives no levels >= 1")
    return levels


# ----- targets ---------------------------------------------------------------------------
class TargetFactory:
    """Opens the target a scenario drives. In-process targets are rebuilt per scenario
    around one loaded runner (offline needs its own batch size); a remote target is shared."""

    def __init__(
        self,
        handle: ModelHandle,
        config: BenchConfig,
        runner: Runner | None = None,
        remote: Target | None = None,
    ) -> None:
        self.handle = handle
        self.config = config
        self.runner = runner
        self.remote = remote

    @contextmanager
    def open(
        self, max_batch_size: int | None = None, offline: bool = False, drain: bool = True
    ) -> Iterator[Target]:
        """A started target; on exit an in-process one finishes its queue (or, without
        `drain`, fails what is still queued and only waits for the batch in flight)."""
        if self.remote is not None:
            yield self.remote
            return
        assert self.runner is not None
        target = InProcessTarget(
            self.runner,
            max_batch_size=max_batch_size or self.config.max_batch_size,
            max_queue_delay_us=0 if offline else self.config.max_queue_delay_us,
            preferred_batch_sizes=() if offline else self.config.preferred_batch_sizes,
        )
        target.start()
        try:
            yield target
        finally:
            target.stop(drain=drain)

    def describe(self) -> dict[str, Any]:
        if self.remote is not None:
            return self.remote.describe()
        assert self.runner is not None
        with self.open() as target:
            return target.describe()


def make_remote_target(url: str, handle: ModelHandle, config: BenchConfig) -> Target:
    try:
        from lab.bench.remote_target import RemoteTarget
    except ModuleNotFoundError as exc:
        if exc.name == "lab.bench.remote_target":
            raise ConfigError(
                "remote targets need lab/bench/remote_target.py, which is not in this build"
            ) from None
        raise
    return RemoteTarget(
        url, handle, concurrency=config.remote_concurrency, timeout_s=config.timeout_s
    )


# ----- the run ---------------------------------------------------------------------------
Measured = list[tuple[Segment, QuerySource]]


class Bench:
    """One benchmark run over several scenarios. See the module docstring."""

    def __init__(
        self,
        config: BenchConfig,
        handle: ModelHandle,
        workload: Any,
        targets: dict[str, TargetFactory],
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.handle = handle
        self.workload = workload
        self.targets = targets
        self.progress = progress or Progress(enabled=False)
        self.slo_ms = config.slo_ms if config.slo_ms is not None else handle.config.slo_ms
        self.work: dict[str, Any] | None = None
        self.ceilings: dict[str, Any] | None = None
        self.single_stream_latency_s: float | None = None
        self.offline_throughput: float | None = None
        self._streams: dict[str, int] = {}
        self._seen: set[int] = set()  # sample digests of the current scenario

    # ----- helpers -----------------------------------------------------------------------
    def stream(self, tag: str) -> str:
        """A fresh stream name per segment, so no two segments share a sample."""
        count = self._streams.get(tag, 0)
        self._streams[tag] = count + 1
        return f"{tag}-{count}"

    def source(self, tag: str, count: int, batch_size: int = 1) -> QuerySource:
        stream = self.stream(tag)
        return QuerySource(
            lambda n, chunk: self.workload.samples(n, f"{stream}.{chunk}"),
            self.workload.collate,
            count,
            batch_size,
            seen=self._seen,
        )

    def rules(self, kind: str, duration_s: float | None = None, **changes: Any) -> Rules:
        rules = Rules(
            min_duration_s=self.config.duration_s if duration_s is None else duration_s,
            min_queries=self.config.min_queries,
            slo_ms=self.slo_ms if kind == "server" else None,
            windows=self.config.stability_windows,
            stability_tolerance=self.config.stability_tolerance,
        )
        return Rules(**{**asdict(rules), **changes})

    def roles(self) -> list[str]:
        return [CANDIDATE, BASELINE] if BASELINE in self.targets else [CANDIDATE]

    def order(self, round_index: int) -> list[str]:
        roles = self.roles()
        return roles if round_index % 2 == 0 else list(reversed(roles))

    def keep_outputs(self, role: str) -> bool:
        return self.config.audit and role == CANDIDATE

    # ----- segments ----------------------------------------------------------------------
    def closed_segment(
        self,
        target: Target,
        tag: str,
        concurrency: int,
        duration_s: float,
        min_queries: int,
        keep: bool,
        latency_s: float | None,
        stable_for: tuple[str, Rules] | None = None,
    ) -> tuple[Segment, QuerySource]:
        """A closed-loop segment; with `stable_for` = (kind, rules) it runs on (up to twice
        the duration) until its stability windows agree, like perf_analyzer."""
        estimate = duration_s / max(latency_s or 1e-3, 1e-5) * concurrency * 1.25
        count = int(min(max(min_queries, estimate) + 8 * concurrency, 2_000_000))
        source = self.source(tag, count)
        until = None
        if stable_for is not None and stable_for[1].check_stability:
            kind, rules = stable_for
            until = lambda segment: is_stable(kind, [segment], rules)  # noqa: E731
        segment = run_closed_loop(
            target,
            source,
            concurrency,
            min_duration_s=duration_s,
            min_queries=min_queries,
            keep_outputs=keep,
            timeout_s=self.config.timeout_s,
            until=until,
            check_every_s=max(0.2, self.rules("single-stream").window_s / 2),
            max_duration_s=2 * duration_s,
        )
        return segment, source

    def open_segment(
        self,
        target: Target,
        source: QuerySource,
        offsets_ns: np.ndarray,
        keep: bool,
        timeout_s: float | None = None,
    ) -> tuple[Segment, QuerySource]:
        segment = run_open_loop(
            target,
            source.queries,
            offsets_ns,
            keep_outputs=keep,
            timeout_s=self.config.timeout_s if timeout_s is None else timeout_s,
        )
        return segment, source

    def server_segment(
        self,
        target: Target,
        tag: str,
        qps: float,
        duration_s: float,
        min_queries: int,
        keep: bool,
        timeout_s: float | None = None,
    ) -> tuple[Segment, QuerySource]:
        # Arrivals until the schedule covers the duration (and at least min_queries of them).
        seed = int(self.workload.rng(self.stream(f"{tag}-schedule")).integers(2**63))
        drawn = max(min_queries, int(math.ceil(qps * duration_s * 1.5)) + 16)
        offsets = poisson_schedule(qps, drawn, seed)
        covering = int(np.searchsorted(offsets, int(duration_s * 1e9))) + 1
        offsets = offsets[: min(drawn, max(min_queries, covering))]
        source = self.source(tag, len(offsets))
        return self.open_segment(target, source, offsets, keep, timeout_s)

    def offline_segment(
        self, target: Target, tag: str, samples: int, batch_size: int, keep: bool
    ) -> tuple[Segment, QuerySource]:
        source = self.source(tag, max(samples, batch_size), batch_size)
        offsets = np.zeros(len(source), dtype=np.int64)
        return self.open_segment(target, source, offsets, keep)

    def warm_up(self, target: Target, tag: str, concurrency: int = 1) -> float | None:
        """Unmeasured queries; returns their median latency in seconds (None if none ran)."""
        if self.config.warmup_queries < 1:
            return None
        segment, _ = self.closed_segment(
            target, f"warmup-{tag}", concurrency, 0.0, self.config.warmup_queries, False, 1e-3
        )
        latency = segment.latency_ns
        return float(np.median(latency)) / 1e9 if latency.size else None

    # ----- scenarios ---------------------------------------------------------------------
    def run_scenario(self, name: str) -> dict[str, Any]:
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "single-stream": self.single_stream,
            "offline": self.offline,
            "server": self.server,
            "find-peak": self.find_peak,
            "sweep": self.sweep,
        }
        telemetry = Telemetry() if self.config.telemetry else None
        if telemetry is not None:
            telemetry.start()
        started = time.perf_counter()
        self._seen = set()
        try:
            result = runners[name]()
        finally:
            usage = telemetry.stop() if telemetry is not None else None
        result["wall_s"] = time.perf_counter() - started
        result["telemetry"] = usage
        result["metrics"] = scenario_metrics(result)
        return result

    def alternate(
        self, run: Callable[[str, Target, int], tuple[Segment, QuerySource]], **open_args: Any
    ) -> dict[str, Measured]:
        """Run `run(role, target, round)` for every round and role in ABBA order."""
        measured: dict[str, Measured] = {role: [] for role in self.roles()}
        for round_index in range(self.config.rounds if BASELINE in self.targets else 1):
            for role in self.order(round_index):
                with self.targets[role].open(**open_args) as target:
                    measured[role].append(run(role, target, round_index))
        return measured

    def single_stream(self) -> dict[str, Any]:
        rounds = self.config.rounds if BASELINE in self.targets else 1
        duration = self.config.duration_s / rounds
        min_queries = -(-self.config.min_queries // rounds)
        latency: dict[str, float | None] = {}
        for role in self.roles():
            with self.targets[role].open() as target:
                latency[role] = self.warm_up(target, f"single-stream-{role}")

        def run(role: str, target: Target, round_index: int) -> tuple[Segment, QuerySource]:
            with self.progress.phase(f"single-stream {role} round {round_index + 1}", duration):
                return self.closed_segment(
                    target,
                    f"single-stream-{role}",
                    1,
                    duration,
                    min_queries,
                    self.keep_outputs(role),
                    latency[role],
                    ("single-stream", self.rules("single-stream")),
                )

        measured = self.alternate(run)
        result = self.finish("single-stream", measured, self.rules("single-stream"))
        p50 = result["latency"]["percentiles"]["p50"]["ms"]
        if p50:
            self.single_stream_latency_s = p50 / 1e3
        return result

    def offline_batch_size(self) -> int:
        if self.config.batch_size:
            return self.config.batch_size
        config = self.handle.config
        top = self.config.max_batch_size or config.max_batch_size
        preferred = self.config.preferred_batch_sizes or list(config.preferred_batch_sizes)
        fitting = [p for p in preferred if p <= top]
        return min(fitting) if fitting else top

    def offline(self) -> dict[str, Any]:
        batch = self.offline_batch_size()
        rounds = self.config.rounds if BASELINE in self.targets else 1
        duration = self.config.duration_s / rounds
        throughput: dict[str, float] = {}
        for role in self.roles():
            with self.targets[role].open(max_batch_size=batch, offline=True) as target:
                warm = max(self.config.warmup_queries, 4 * batch)
                segment, _ = self.offline_segment(
                    target, f"warmup-offline-{role}", warm, batch, False
                )
                span = segment.duration_ns / 1e9
                throughput[role] = segment.samples.sum() / span if span > 0 else 1000.0
        min_samples = -(-self.config.min_queries // rounds)

        def run(role: str, target: Target, round_index: int) -> tuple[Segment, QuerySource]:
            count = max(min_samples, int(throughput[role] * duration * 1.2))
            with self.progress.phase(
                f"offline {role} round {round_index + 1}: {count} samples, batch {batch}", duration
            ):
                return self.offline_segment(
                    target, f"offline-{role}", count, batch, self.keep_outputs(role)
                )

        measured = self.alternate(run, max_batch_size=batch, offline=True)
        # A burst that finished early (the warm-up overestimated the speed) is topped up with
        # further bursts until the minimum duration is reached; like the closed-loop
        # scenarios, an unstable measurement gets more bursts, up to twice the duration.
        rules = self.rules("offline")
        top_ups = 0
        while top_ups < 6:
            segments = [s for s, _ in measured[CANDIDATE]]
            done_s = sum(s.duration_ns for s in segments) / 1e9
            if done_s >= self.config.duration_s and (
                is_stable("offline", segments, rules) or done_s >= 2 * self.config.duration_s
            ):
                break
            last = segments[-1]
            rate = last.samples.sum() / max(last.duration_ns / 1e9, 1e-9)
            wanted_s = max(self.config.duration_s - done_s, rules.window_s * 2)
            count = max(batch, int(rate * wanted_s * 1.2))
            top_ups += 1
            with (
                self.progress.phase(f"offline top-up {top_ups}: {count} samples", 0),
                self.targets[CANDIDATE].open(max_batch_size=batch, offline=True) as target,
            ):
                measured[CANDIDATE].append(
                    self.offline_segment(
                        target, f"offline-{CANDIDATE}", count, batch, self.keep_outputs(CANDIDATE)
                    )
                )
        result = self.finish("offline", measured, rules)
        result["batch_size_requested"] = batch
        result["top_up_bursts"] = top_ups
        self.offline_throughput = result["throughput"]["samples_per_s"]
        return result

    def server_qps(self) -> float:
        if self.config.qps is None:
            raise ConfigError("the server scenario needs --qps (or use find-peak to search for it)")
        return float(self.config.qps)

    def server(
        self, qps: float | None = None, duration_s: float | None = None, min_queries: int = 0
    ) -> dict[str, Any]:
        qps = self.server_qps() if qps is None else qps
        total = self.config.duration_s if duration_s is None else duration_s
        rounds = self.config.rounds if BASELINE in self.targets else 1
        duration = total / rounds
        min_queries = -(-max(self.config.min_queries, min_queries) // rounds)
        for role in self.roles():
            with self.targets[role].open() as target:
                self.warm_up(target, f"server-{role}")

        def run(role: str, target: Target, round_index: int) -> tuple[Segment, QuerySource]:
            with self.progress.phase(
                f"server {role} round {round_index + 1} at {qps:.1f} qps", duration
            ):
                return self.server_segment(
                    target, f"server-{role}", qps, duration, min_queries, self.keep_outputs(role)
                )

        measured = self.alternate(run)
        result = self.finish("server", measured, self.rules("server", duration_s=total))
        result["target_qps"] = qps
        return result

    def find_peak(self) -> dict[str, Any]:
        """MLPerf FindPeakPerformance: bracket the highest VALID QPS with short server steps
        (p99 <= SLO and no failures; doubling up or halving down, then bisection to the
        search tolerance), then confirm the bracket's lower end with a full-length server
        run (at least 700 queries, all validity rules, audit). A confirming run that fails
        steps down (see `backoff`) and runs again, up to 4 times; the peak reported is the
        QPS of the run that passed, or none."""
        with self.targets[CANDIDATE].open() as target:
            latency_s = self.warm_up(target, "find-peak")
        if self.config.qps is not None:
            start = float(self.config.qps)
        else:
            latency_s = self.single_stream_latency_s or latency_s or 0.01
            start = 0.7 / latency_s
            if self.offline_throughput:
                start = max(start, 0.5 * self.offline_throughput)
        steps: list[dict[str, Any]] = []
        step_s = self.config.find_peak_step_s
        # Steps are short estimates for bracketing: SLO and failures count, the p99 claim
        # (662 queries) and stability are left to the full-length run at the end.
        rules = self.rules(
            "server", duration_s=0.0, min_queries=0, check_stability=False, require_claim=False
        )

        # An overloaded step is not waited out: queries still unanswered this long after the
        # last arrival count as failures (they are already far past the SLO).
        give_up_s = max(1.0, 4 * self.slo_ms / 1e3)

        def trial(qps: float) -> bool:
            with (
                self.progress.phase(f"find-peak step {len(steps) + 1} at {qps:.1f} qps", step_s),
                self.targets[CANDIDATE].open(drain=False) as target,
            ):
                segment = self.server_segment(
                    target,
                    "find-peak-step",
                    qps,
                    step_s,
                    FIND_PEAK_STEP_MIN_QUERIES,
                    False,
                    timeout_s=give_up_s,
                )[0]
            summary = summarize("server", [segment], rules)
            valid = bool(summary["validity"]["valid"])
            steps.append(
                {
                    "qps": qps,
                    "valid": valid,
                    "queries": summary["queries"],
                    "p50_ms": summary["latency"]["percentiles"]["p50"]["ms"],
                    "p99_ms": summary["latency"]["percentiles"]["p99"]["ms"],
                    "achieved_qps": summary["throughput"]["queries_per_s"],
                    "reasons": summary["validity"]["reasons"],
                }
            )
            return valid

        limit = self.config.find_peak_max_steps
        low, high = 0.0, math.inf
        qps = start
        if trial(qps):
            low = qps
            while len(steps) < limit:
                qps = low * 2
                if trial(qps):
                    low = qps
                else:
                    high = qps
                    break
        else:
            high = qps
            while len(steps) < limit and qps > 1e-3:
                qps = qps / 2
                if trial(qps):
                    low = qps
                    break
                high = qps
        while low > 0 and math.isfinite(high) and len(steps) < limit:
            if (high - low) / low <= self.config.find_peak_tolerance:
                break
            middle = (low + high) / 2
            if trial(middle):
                low = middle
            else:
                high = middle
        attempts: list[dict[str, Any]] = []
        search: dict[str, Any] = {
            "start_qps": start,
            "lower_qps": low,
            "upper_qps": None if math.isinf(high) else high,
            "tolerance": self.config.find_peak_tolerance,
            "step_s": step_s,
            "steps": steps,
            "final_attempts": attempts,
        }
        if low <= 0:
            result = self.server(
                min(s["qps"] for s in steps), self.final_duration(), FIND_PEAK_MIN_QUERIES
            )
            add_reason(result, "find-peak found no QPS that met the SLO")
            attempts.append({"qps": result["target_qps"], "valid": False})
        else:
            qps = low
            for attempt in range(FIND_PEAK_CONFIRM_ATTEMPTS):
                result = self.server(qps, self.final_duration(), FIND_PEAK_MIN_QUERIES)
                attempts.append(
                    {
                        "qps": qps,
                        "valid": result["validity"]["valid"],
                        "reasons": result["validity"]["reasons"],
                    }
                )
                if result["validity"]["valid"] or attempt == FIND_PEAK_CONFIRM_ATTEMPTS - 1:
                    break
                qps *= self.backoff(result)
        result["scenario"] = "find-peak"
        result["peak_qps"] = result["target_qps"] if result["validity"]["valid"] else None
        result["find_peak"] = search
        return result

    def backoff(self, result: dict[str, Any]) -> float:
        """How far to step down after a failed confirming run: by the search tolerance when
        it only just missed, further when p99 overshot the SLO badly (a queue that kept
        growing through a full-length run: short steps cannot see that)."""
        p99 = result["latency"]["percentiles"]["p99"]["ms"] or math.inf
        overshoot = p99 / self.slo_ms
        if overshoot <= 2:
            return 1 - self.config.find_peak_tolerance
        return 0.7 if overshoot <= 10 else 0.5

    def final_duration(self) -> float:
        return self.config.final_duration_s or self.config.duration_s

    def sweep(self) -> dict[str, Any]:
        levels = parse_concurrency(self.config.concurrency)
        rounds = self.config.rounds if BASELINE in self.targets else 1
        duration = self.config.duration_s / rounds
        min_queries = -(-self.config.min_queries // rounds)
        results = []
        for level in levels:
            latency: dict[str, float | None] = {}
            for role in self.roles():
                with self.targets[role].open() as target:
                    latency[role] = self.warm_up(target, f"sweep-{level}-{role}", level)

            def run(
                role: str,
                target: Target,
                round_index: int,
                level: int = level,
                latency: dict[str, float | None] = latency,
            ) -> tuple[Segment, QuerySource]:
                with self.progress.phase(f"sweep concurrency {level} {role}", duration):
                    return self.closed_segment(
                        target,
                        f"sweep-{level}-{role}",
                        level,
                        duration,
                        min_queries,
                        self.keep_outputs(role),
                        latency[role],
                        ("sweep", self.rules("sweep")),
                    )

            measured = self.alternate(run)
            level_result = self.finish("sweep", measured, self.rules("sweep"))
            level_result["concurrency"] = level
            results.append(level_result)
        reasons = [
            f"concurrency {r['concurrency']}: {reason}"
            for r in results
            for reason in r["validity"]["reasons"]
        ]
        return {
            "scenario": "sweep",
            "levels": results,
            "validity": {"valid": not reasons, "reasons": reasons, "warnings": []},
            "audit": _merge_audits([r.get("audit") for r in results]),
        }

    # ----- finishing a scenario ----------------------------------------------------------
    def finish(self, kind: str, measured: dict[str, Measured], rules: Rules) -> dict[str, Any]:
        candidate = measured[CANDIDATE]
        result = summarize(kind, [s for s, _ in candidate], rules)
        duplicates = _duplicates(candidate)
        result["distinct_samples"] = {"samples": result["samples"], "repeated": duplicates}
        if duplicates:
            add_reason(result, f"{duplicates} samples were repeats: every sample must be distinct")
        if self.config.audit:
            with self.progress.phase(f"{kind} audit", 0):
                audit = run_audit(
                    [(segment, source.samples) for segment, source in candidate],
                    self.workload,
                    self.handle.precision,
                    self.config.audit_fraction,
                    self.config.audit_count,
                    stream=f"{kind}-{len(self._streams)}",
                )
            result["audit"] = audit
            if not audit["passed"]:
                first = audit["failures"][0] if audit["failures"] else "no details"
                add_reason(
                    result,
                    f"audit failed: outputs of {len(audit['failing'])} of {audit['audited']} "
                    f"audited samples do not match the reference ({first})",
                )
        else:
            result["audit"] = None
        if BASELINE in measured:
            baseline = summarize(kind, [s for s, _ in measured[BASELINE]], rules)
            for key in ("histogram", "stability"):
                baseline.pop(key, None)
            result["baseline"] = baseline
            result["speedup"] = speedup(kind, measured[CANDIDATE], measured[BASELINE])
        if self.work is not None and self.ceilings is not None:
            from lab.bench.roofline import attainment, work_for

            ran = [
                source.samples[i]
                for segment, source in candidate
                for ids in segment.sample_ids
                for i in ids
            ]
            work = {**self.work, **work_for(self.work, ran, self.handle.inputs)}
            mean_batch = result["batch_size"]["mean"] or 1.0
            result["roofline"] = attainment(
                work, self.ceilings, result["throughput"]["samples_per_s"], mean_batch
            )
            result["roofline"]["flops_per_sample"] = work["flops_per_sample"]
        return result


def _duplicates(measured: Measured) -> int:
    """Samples that repeated one drawn earlier in the scenario (sources share their digests)."""
    return sum(source.duplicates for _, source in measured)


def _merge_audits(audits: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    present = [a for a in audits if a is not None]
    if not present:
        return None
    return {
        "kind": "TEST01",
        "audited": sum(a["audited"] for a in present),
        "completed_samples": sum(a["completed_samples"] for a in present),
        "passed": all(a["passed"] for a in present),
        "failures": [f for a in present for f in a["failures"]][:10],
        "failing": [f for a in present for f in a["failing"]][:20],
    }


def speedup(kind: str, candidate: Measured, baseline: Measured) -> dict[str, Any]:
    """Candidate vs baseline from the same run: > 1 means the candidate is faster.

    single-stream: baseline p50 / candidate p50; server: the same with p99 (same QPS);
    offline and sweep: candidate samples/s / baseline samples/s. 95% bootstrap intervals."""

    def hist(measured: Measured) -> LatencyHistogram:
        h = LatencyHistogram()
        for segment, _ in measured:
            h.record_many(segment.latency_ns)
        return h

    def gaps(measured: Measured) -> tuple[np.ndarray, np.ndarray]:
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


def _metric(
    name: str,
    value: float | None,
    unit: str,
    direction: str,
    ci: Sequence[float | None] | None = None,
    primary: bool = False,
) -> dict[str, Any]:
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


def scenario_metrics(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics a comparison reads, each with its declared direction."""
    kind = result["scenario"]
    metrics: list[dict[str, Any]] = []
    if kind == "sweep":
        for level in result["levels"]:
            c = level["concurrency"]
            metrics.append(
                _metric(
                    f"samples_per_s@c{c}",
                    level["throughput"]["samples_per_s"],
                    "samples/s",
                    "higher",
                    level["throughput"]["samples_per_s_ci"],
                )
            )
            metrics.append(_latency_metric(level, 99.0, f"latency_p99_ms@c{c}"))
        return metrics
    if kind == "find-peak":
        search = result["find_peak"]
        upper = search["upper_qps"]
        peak = result.get("peak_qps")
        metrics.append(
            _metric(
                "peak_qps",
                peak,
                "queries/s",
                "higher",
                [peak, upper if upper is not None else peak] if peak is not None else None,
                primary=True,
            )
        )
    if kind in ("single-stream",):
        metrics.append(_latency_metric(result, 50.0))
        metrics.append(_latency_metric(result, 90.0, primary=True))
        metrics.append(_latency_metric(result, 99.0))
        metrics.append(
            _metric(
                "samples_per_s",
                result["throughput"]["samples_per_s"],
                "samples/s",
                "higher",
                result["throughput"]["samples_per_s_ci"],
            )
        )
    if kind in ("server", "find-peak"):
        metrics.append(_latency_metric(result, 50.0))
        metrics.append(_latency_metric(result, 99.0, primary=kind == "server"))
        metrics.append(
            _metric("achieved_qps", result["throughput"]["queries_per_s"], "queries/s", "higher")
        )
    if kind == "offline":
        metrics.append(
            _metric(
                "samples_per_s",
                result["throughput"]["samples_per_s"],
                "samples/s",
                "higher",
                result["throughput"]["samples_per_s_ci"],
                primary=True,
            )
        )
    if result.get("speedup"):
        s = result["speedup"]
        metrics.append(
            _metric(f"speedup_{s['metric']}", s["ratio"], "x", "higher", s["ci"], primary=False)
        )
    return metrics


def _latency_metric(
    result: dict[str, Any], q: float, name: str | None = None, primary: bool = False
) -> dict[str, Any]:
    key = pkey(q)
    entry = result["latency"]["percentiles"][key]
    ci = result.get("latency_ci", {}).get(key)
    return _metric(name or f"latency_{key}_ms", entry["ms"], "ms", "lower", ci, primary)


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----- a whole run -----------------------------------------------------------------------
def _is_remote(target: str) -> bool:
    return target.startswith(("http://", "https://", "grpc://"))


def _ceiling_framework(runner: Runner | None) -> tuple[str, str]:
    """(framework, device) the ceilings are measured with: the runner's own where we can."""
    if runner is None:
        return "numpy", "cpu"
    options = runner.options
    if runner.name == "torch":
        return "torch", str(options.get("device", "cpu"))
    if runner.name == "onnxruntime" and str(options.get("provider", "cpu")) == "cpu":
        return "onnxruntime", "cpu"
    if runner.name in ("onnxruntime", "tensorrt"):
        return "torch", "cuda"
    return "numpy", "cpu"


def measure_roofline(bench: Bench, runner: Runner | None) -> dict[str, Any]:
    from lab.bench.roofline import measure_ceilings, work_model

    handle = bench.handle
    if not handle.onnx_path.is_file():
        return {"skipped": f"no ONNX graph at {handle.onnx_path} to count work from"}
    if runner is None:
        return {
            "skipped": "remote target: the ceilings of this machine say nothing of the server's"
        }
    framework, device = _ceiling_framework(runner)
    with bench.progress.phase("roofline: counting work and measuring ceilings", 3.0):
        pool = bench.workload.samples(256, "roofline")
        work = work_model(handle.onnx_path, pool, handle.inputs)
        try:
            ceilings = measure_ceilings(framework, budget_s=0.5, device=device)
        except (ImportError, RuntimeError) as exc:  # e.g. CUDA asked for but not usable
            ceilings = measure_ceilings("numpy", budget_s=0.5)
            ceilings["fallback_reason"] = f"{framework} on {device}: {exc}"
    bench.work, bench.ceilings = work, ceilings
    return {"work": work, "ceilings": ceilings}


def run_bench(
    config: BenchConfig,
    progress: Progress | None = None,
    handle: ModelHandle | None = None,
    workload: Any = None,
    runner: Runner | None = None,
    baseline_runner: Runner | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every configured scenario and return the report (see lab/bench/report.py).

    `handle`, `workload`, `runner` and `baseline_runner` override what the config names
    (tests and the harness self-benchmark pass their own); runners given here are loaded if
    needed and closed at the end either way."""
    from lab import __version__
    from lab.bench.environment import fingerprint, model_fingerprint
    from lab.bench.report import SCHEMA_VERSION, verdict

    started = time.perf_counter()
    progress = progress or Progress(enabled=False)
    if handle is None:
        from lab.repository import ModelRepository

        handle = ModelRepository(config.model_repository).handle(
            config.model, config.size, config.precision
        )
    if workload is None:
        from lab.workload import Workload

        workload = Workload(handle, config.seed)
    with ExitStack() as stack:
        targets: dict[str, TargetFactory] = {}
        candidate_runner: Runner | None = None
        if _is_remote(config.target):
            remote = make_remote_target(config.target, handle, config)
            remote.start()
            stack.callback(remote.stop)
            targets[CANDIDATE] = TargetFactory(handle, config, remote=remote)
        elif config.target in ("inprocess", "in-process"):
            candidate_runner = _loaded(runner, config.runner, config.runner_options, handle, stack)
            targets[CANDIDATE] = TargetFactory(handle, config, runner=candidate_runner)
        else:
            raise ConfigError(
                f"unknown target {config.target!r}: use inprocess, http://host:port or grpc://host:port"
            )
        if config.baseline or baseline_runner is not None:
            loaded = _loaded(
                baseline_runner, config.baseline or "", config.baseline_options, handle, stack
            )
            targets[BASELINE] = TargetFactory(handle, config, runner=loaded)
        bench = Bench(config, handle, workload, targets, progress)
        report: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": "servelab-bench-report",
            "name": config.name
            or f"{handle.name}-{handle.size}-"
            + ("remote" if _is_remote(config.target) else config.runner.rsplit(":", 1)[-1]),
            "created_at": now_utc(),
            "servelab_version": __version__,
            "config": config.to_dict(),
            "environment": fingerprint(),
            "model": model_fingerprint(handle, getattr(workload, "seed_label", config.seed)),
            "targets": {role: factory.describe() for role, factory in targets.items()},
            "slo_ms": bench.slo_ms,
        }
        report.update(extra or {})
        report["roofline"] = (
            measure_roofline(bench, candidate_runner)
            if config.roofline
            else {"skipped": "roofline disabled"}
        )
        report["scenarios"] = [bench.run_scenario(name) for name in config.scenarios]
        report["replay"] = None
        if config.replay_check:
            with (
                progress.phase("replay check (TEST04)", 1.0),
                targets[CANDIDATE].open(offline=True) as target,
            ):
                report["replay"] = replay_check(
                    target,
                    workload,
                    count=config.replay_count,
                    tolerance=config.replay_tolerance,
                    timeout_s=config.timeout_s,
                )
        report["verdict"] = verdict(report)
        report["wall_s"] = time.perf_counter() - started
    return report


def _loaded(
    runner: Runner | None,
    spec: str,
    options: Mapping[str, Any],
    handle: ModelHandle,
    stack: ExitStack,
) -> Runner:
    from lab.runners import create_runner

    runner = runner or create_runner(spec, dict(options))
    if not runner.is_loaded:
        runner.load(handle)
    stack.callback(runner.close)
    return runner
