"""What every scenario builds on: the run's fixed things and the segment helpers.

`BenchContext` holds what does not change while scenarios run (config, model handle,
workload, targets, progress, the measured roofline inputs) plus two bookkeeping objects:
the stream-name counter shared by the whole run (no two segments share a sample) and the
digests of the samples drawn in the current scenario (repeats are counted). It holds no
results: a scenario returns its result, and later scenarios receive earlier results as a
read-only mapping (see lab.bench.scenarios.registry).

With a baseline, `alternate` runs candidate and baseline segments in ABBA order
(C B B C ...) so that drift in the machine hits both alike; `finish` summarises the
candidate, audits it, and adds the baseline, the speed-up and the roofline attainment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lab.bench.analysis import Rules, add_reason, is_stable, summarize
from lab.bench.audit import run_audit
from lab.bench.config import BenchConfig
from lab.bench.engine import QuerySource, Segment, run_closed_loop, run_open_loop
from lab.bench.metrics import speedup
from lab.bench.progress import Progress
from lab.bench.schedule import poisson_schedule
from lab.bench.target import Target
from lab.errors import ConfigError
from lab.repository import ModelHandle

if TYPE_CHECKING:
    from lab.bench.run import TargetFactory

CANDIDATE, BASELINE = "candidate", "baseline"
# Open-loop queries are all prepared before the first is issued: their memory is bounded
# (the harness and the model take a few hundred MB besides).
PREPARED_QUERIES_BUDGET_BYTES = 400_000_000
QUERY_OVERHEAD_BYTES = 2_000
Measured = list[tuple[Segment, QuerySource]]
RoleRun = Callable[[str, Target, int], tuple[Segment, QuerySource]]


class StreamNames:
    """Fresh stream names per tag ("offline-candidate-0", "-1", ...) for the whole run."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def next(self, tag: str) -> str:
        count = self._counts.get(tag, 0)
        self._counts[tag] = count + 1
        return f"{tag}-{count}"

    def __len__(self) -> int:
        return len(self._counts)


@dataclass
class BenchContext:
    """The fixed things of one run, and the helpers scenarios measure with."""

    config: BenchConfig
    handle: ModelHandle
    workload: Any
    targets: Mapping[str, TargetFactory]
    progress: Progress = field(default_factory=lambda: Progress(enabled=False))
    work: dict[str, Any] | None = None  # roofline: work counted from the ONNX graph
    ceilings: dict[str, Any] | None = None  # roofline: measured peak FLOP/s and bytes/s
    streams: StreamNames = field(default_factory=StreamNames)
    seen: set[int] = field(default_factory=set)  # sample digests of the current scenario
    cuda_index: int = 0  # the runner's CUDA device, for NVML telemetry

    def for_scenario(self) -> BenchContext:
        """The same run with a fresh set of seen samples (the stream counter is shared)."""
        return replace(self, seen=set())

    @property
    def slo_ms(self) -> float:
        slo = self.config.slo_ms
        return slo if slo is not None else self.handle.config.slo_ms

    # ----- helpers -----------------------------------------------------------------------
    def stream(self, tag: str) -> str:
        """A fresh stream name per segment, so no two segments share a sample."""
        return self.streams.next(tag)

    def source(self, tag: str, count: int, batch_size: int = 1) -> QuerySource:
        stream = self.stream(tag)
        return QuerySource(
            lambda n, chunk: self.workload.samples(n, f"{stream}.{chunk}"),
            self.workload.collate,
            count,
            batch_size,
            seen=self.seen,
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

    @property
    def rounds(self) -> int:
        """Timed rounds per scenario: `--rounds` with a baseline, one without."""
        return self.config.rounds if BASELINE in self.targets else 1

    def order(self, round_index: int) -> list[str]:
        roles = self.roles()
        return roles if round_index % 2 == 0 else list(reversed(roles))

    def keep_outputs(self, role: str) -> bool:
        return self.config.checks.audit and role == CANDIDATE

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
        give_up_after_s: float | None = None,
        slo_ms: float | None = None,
    ) -> tuple[Segment, QuerySource]:
        segment = run_open_loop(
            target,
            source.queries,
            offsets_ns,
            keep_outputs=keep,
            timeout_s=self.config.timeout_s,
            give_up_after_s=give_up_after_s,
            slo_ns=None if slo_ms is None else int(slo_ms * 1e6),
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
        give_up_after_s: float | None = None,
        abort_on_slo: bool = False,
    ) -> tuple[Segment, QuerySource]:
        """With `abort_on_slo`, issuing stops once p99 certainly misses the SLO."""
        # Arrivals until the schedule covers the duration (and at least min_queries of them).
        seed = int(self.workload.rng(self.stream(f"{tag}-schedule")).integers(2**63))
        drawn = max(min_queries, int(math.ceil(qps * duration_s * 1.5)) + 16)
        offsets = poisson_schedule(qps, drawn, seed)
        covering = int(np.searchsorted(offsets, int(duration_s * 1e9))) + 1
        offsets = offsets[: min(drawn, max(min_queries, covering))]
        self.check_prepared_memory(
            len(offsets), f"a server run at {qps:g} qps for {duration_s:g} s"
        )
        source = self.source(tag, len(offsets))
        slo_ms = self.slo_ms if abort_on_slo else None
        return self.open_segment(target, source, offsets, keep, give_up_after_s, slo_ms)

    def query_bytes(self) -> int:
        """Roughly what one prepared single-sample query holds in memory: the sample, its
        copy for the target, and Python's per-query bookkeeping (measured: about 2 KB)."""
        (sample,) = self.workload.samples(1, "size-estimate")
        data = sum(int(np.asarray(v).nbytes) for v in self.workload.collate([sample]).values())
        return 2 * data + QUERY_OVERHEAD_BYTES

    def max_prepared_queries(self) -> int:
        """How many single-sample queries fit the memory budget."""
        return PREPARED_QUERIES_BUDGET_BYTES // self.query_bytes()

    def check_prepared_memory(self, queries: int, what: str) -> None:
        """ConfigError when `queries` prepared ahead of an open-loop run would not fit the
        memory budget (they are all built before the first is issued)."""
        need = queries * self.query_bytes()
        if need > PREPARED_QUERIES_BUDGET_BYTES:
            raise ConfigError(
                f"{what} prepares {queries:,} queries (about {need / 1e6:,.0f} MB) before "
                f"issuing the first; the budget is {PREPARED_QUERIES_BUDGET_BYTES / 1e6:,.0f} "
                f"MB: lower --qps or shorten --duration-s"
            )

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

    def alternate(self, run: RoleRun, **open_args: Any) -> dict[str, Measured]:
        """Run `run(role, target, round)` for every round and role in ABBA order."""
        measured: dict[str, Measured] = {role: [] for role in self.roles()}
        for round_index in range(self.rounds):
            for role in self.order(round_index):
                with self.targets[role].open(**open_args) as target:
                    measured[role].append(run(role, target, round_index))
        return measured

    # ----- finishing a scenario ----------------------------------------------------------
    def finish(self, kind: str, measured: dict[str, Measured], rules: Rules) -> dict[str, Any]:
        """The candidate's summary with distinct-sample count, audit, baseline, speed-up and
        roofline attainment."""
        candidate = measured[CANDIDATE]
        result = summarize(kind, [s for s, _ in candidate], rules)
        duplicates = sum(source.duplicates for _, source in candidate)
        result["distinct_samples"] = {"samples": result["samples"], "repeated": duplicates}
        if duplicates:
            add_reason(result, f"{duplicates} samples were repeats: every sample must be distinct")
        result["audit"] = self.audit(kind, candidate, result) if self.config.checks.audit else None
        if BASELINE in measured:
            baseline = summarize(kind, [s for s, _ in measured[BASELINE]], rules)
            baseline.pop("stability", None)  # the histogram stays: plots draw it (1.4)
            result["baseline"] = baseline
            result["speedup"] = speedup(kind, measured[CANDIDATE], measured[BASELINE])
        if self.work is not None and self.ceilings is not None:
            result["roofline"] = self.attainment(candidate, result)
        return result

    def audit(self, kind: str, candidate: Measured, result: dict[str, Any]) -> dict[str, Any]:
        checks = self.config.checks
        with self.progress.phase(f"{kind} audit", 0):
            audit = run_audit(
                [(segment, source.samples) for segment, source in candidate],
                self.workload,
                self.handle.precision,
                checks.audit_fraction,
                checks.audit_count,
                stream=f"{kind}-{len(self.streams)}",
            )
        if not audit["passed"]:
            first = audit["failures"][0] if audit["failures"] else "no details"
            add_reason(
                result,
                f"audit failed: outputs of {len(audit['failing'])} of {audit['audited']} "
                f"audited samples do not match the reference ({first})",
            )
        return audit

    def attainment(self, candidate: Measured, result: dict[str, Any]) -> dict[str, Any]:
        from lab.bench.roofline import attainment, work_for

        assert self.work is not None and self.ceilings is not None
        ran = [
            source.samples[i]
            for segment, source in candidate
            for ids in segment.sample_ids
            for i in ids
        ]
        work = {**self.work, **work_for(self.work, ran, self.handle.inputs)}
        mean_batch = result["batch_size"]["mean"] or 1.0
        roofline = attainment(
            work, self.ceilings, result["throughput"]["samples_per_s"], mean_batch
        )
        roofline["flops_per_sample"] = work["flops_per_sample"]
        return roofline


def merge_audits(audits: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One TEST01 audit from several (sweep levels)."""
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
