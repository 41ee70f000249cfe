"""Correctness inside the performance run (MLPerf TEST01) and the replay check (TEST04).

Audit: after a timed run, once every output is in, a random subset of the queries that
completed during it is drawn from OS randomness (`secrets`), unrelated to the workload's
seeds: nothing the target saw or could compute (the public seed, the secret seed, the
sample streams) predicts which outputs are checked. They are checked against the reference
computed from the harness's own pristine copies of the samples; the target only ever saw
copies. A run whose audited outputs fail is INVALID however fast it was.

Replay check: a cache keyed on the input makes a repeated sample much faster than a new
one. The check issues fresh samples in blocks of 16 and replays each block, in the same
order, right after it; the 15 queries between a sample and its replay flush some of the
hardware caches that make an honest replay a little faster. MLPerf's TEST04 replays a single
sample, which favours whatever length that sample has; here every sample is its own control.

The decision is built to shrug off a noisy, shared machine while a result cache is still
flagged every time:

1. Paired ratios. Each sample's fresh latency is divided by its replay latency (the median
   of its replays), so long-tailed input lengths cancel exactly; a block's ratio is the
   median of its samples' ratios, so a few stalled queries do not move it. A sample and its
   replay are one block (tens of ms) apart, so slow drift of the machine cancels too.
   Bracketing a replay between two fresh blocks would cancel linear drift as well, but the
   neighbours would be different samples, whose length spread costs more than drift does.
2. A one-sided bound. The blocks' ratios are independent measurements of one central value;
   the order-statistic (sign-test) lower confidence bound on their median must exceed
   `1 + tolerance`. With 3 or 4 blocks that bound is the smallest block ratio: every block
   must look cached, so one block hit by a burst of load cannot flag an honest runner.
3. Confirmation. A pass that looks cached is re-measured with fresh, never-seen samples
   (another sample stream); the run is flagged only if every pass says so. A cache is
   consistent, so it fails every pass; a burst of load rarely strikes twice in the same way.

MLPerf uses 10% on large models; on small CPU models a sample's whole working set stays in
cache and honest replays ran up to 1.10x faster (ranker small, ONNX Runtime, 2 cores), while
a result cache ran 3.3-4.6x faster on the same model: the default tolerance is 25%. Failed
queries flag the check whatever the timings say. Every pass's ratios, bound and verdict are
kept in the result (`passes`) so that a flag can be explained.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lab.bench.engine import Sample, Segment, copy_inputs
from lab.bench.target import Target
from lab.errors import LabError

REPLAY_TOLERANCE = 0.25  # see the module docstring
REPLAY_BLOCK = 16
REPLAY_CONFIDENCE = 0.9  # one-sided, for the lower bound on the median block ratio
REPLAY_PASSES = 2  # a pass that looks cached is confirmed by one more, on fresh samples


class CheckResultLike(Protocol):
    passed: bool
    failures: list[str]
    failing_samples: list[int]

    def to_dict(self) -> dict[str, Any]: ...


class AuditWorkload(Protocol):
    def rng(self, stream: str = ...) -> np.random.Generator: ...

    def reference(self, samples: Sequence[Sample]) -> list[dict[str, np.ndarray]]: ...

    def checker(self, precision: str | None = None) -> Any: ...

    def samples(self, n: int, stream: str = ...) -> list[dict[str, np.ndarray]]: ...

    def collate(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]: ...


@dataclass
class AuditItem:
    segment: int
    query: int
    row: int
    sample: Sample
    outputs: dict[str, np.ndarray]
    batch_size: int


def audit_count(completed: int, fraction: float, count: int | None) -> int:
    """How many to audit: `count` if given, else `fraction` of the completed samples
    (at least 16 and at most 128, never more than there are; 0 when the fraction is 0)."""
    if count is not None:
        return max(0, min(count, completed))
    if fraction <= 0:
        return 0
    return min(completed, max(16, min(128, int(round(fraction * completed)))))


def candidates(segments: Sequence[tuple[Segment, Sequence[Sample]]]) -> list[tuple[int, int, int]]:
    """(segment, query, row) for every sample whose query completed with outputs kept."""
    found: list[tuple[int, int, int]] = []
    for s, (segment, _) in enumerate(segments):
        for q, ids in enumerate(segment.sample_ids):
            if segment.ok[q] and q in segment.outputs:
                found.extend((s, q, row) for row in range(len(ids)))
    return found


def run_audit(
    segments: Sequence[tuple[Segment, Sequence[Sample]]],
    workload: AuditWorkload,
    precision: str | None,
    fraction: float = 0.05,
    count: int | None = None,
    stream: str = "audit",
) -> dict[str, Any]:
    """Check a random subset of the completed queries against the reference.

    The subset is drawn here, after the outputs are in, from OS randomness: never from the
    workload's generators, whose seeds a target could know or guess. `stream` is kept for
    callers and unused."""
    pool = candidates(segments)
    n = audit_count(len(pool), fraction, count)
    result: dict[str, Any] = {
        "kind": "TEST01",
        "completed_samples": len(pool),
        "audited": n,
        "passed": False,
        "failures": [],
        "failing": [],
    }
    if n == 0:
        result["failures"].append("no completed query was available to audit")
        return result
    rng = np.random.default_rng(secrets.randbits(128))
    picked = sorted(rng.choice(len(pool), size=n, replace=False).tolist())
    items = []
    for i in picked:
        s, q, row = pool[i]
        segment, samples = segments[s]
        outputs = segment.outputs[q]
        items.append(
            AuditItem(
                segment=s,
                query=q,
                row=row,
                sample=samples[segment.sample_ids[q][row]],
                outputs={k: np.asarray(v)[row : row + 1] for k, v in outputs.items()},
                batch_size=int(segment.batch_size[q]),
            )
        )
    started = time.perf_counter()
    expected = workload.reference([item.sample for item in items])
    check = workload.checker(precision).check([item.outputs for item in items], expected)
    result["reference_s"] = time.perf_counter() - started
    result["passed"] = bool(check.passed)
    result["failures"] = list(check.failures)
    result["failing"] = [
        {
            "segment": items[i].segment,
            "query": items[i].query,
            "row": items[i].row,
            "batch_size": items[i].batch_size,
        }
        for i in check.failing_samples[:20]
    ]
    result["audited_batch_sizes"] = _counts([item.batch_size for item in items])
    result["check"] = check.to_dict()
    return result


def _counts(values: Sequence[int]) -> dict[str, int]:
    found, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(found, counts)}


@dataclass
class ReplayPass:
    """One pass of the replay check: its blocks' ratios and what they say."""

    stream: str
    block_ratios: list[float]  # per block: median over its samples of fresh / replay
    ratio: float | None  # median of the block ratios
    lower_bound: float | None  # one-sided lower confidence bound on that median
    confidence: float  # the bound's actual confidence (order statistics are discrete)
    flagged: bool  # lower_bound > 1 + tolerance
    fresh_queries: int = 0
    replay_queries: int = 0
    fresh_median_ms: float | None = None
    replay_median_ms: float | None = None
    errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "fresh_queries": self.fresh_queries,
            "replay_queries": self.replay_queries,
            "errors": self.errors,
            "blocks": len(self.block_ratios),
            "block_ratios": [round(r, 4) for r in self.block_ratios],
            "ratio": self.ratio,
            "lower_bound": self.lower_bound,
            "confidence": self.confidence,
            "flagged": self.flagged,
            "fresh_median_ms": self.fresh_median_ms,
            "replay_median_ms": self.replay_median_ms,
        }


def median_lower_bound(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """(bound, its confidence): a one-sided, distribution-free lower confidence bound on the
    median of `values`, the j-th smallest value for the largest j whose sign-test error
    P(Binomial(n, 1/2) <= j - 1) is at most 1 - confidence. When no j reaches `confidence`
    (fewer than log2(1 / (1 - confidence)) values) the smallest value is the bound, with the
    confidence it has: 1 - 2^-n."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values to bound")
    j, below = 1, 1 / 2**n  # P(all n values above the median): the error of the minimum
    while True:
        below_next = below + math.comb(n, j) / 2**n
        if below_next > 1 - confidence or j >= n:
            break
        j, below = j + 1, below_next
    return ordered[j - 1], 1 - below


def decide_replay(
    fresh_ns: Sequence[float],
    replay_ns: Sequence[float],
    block: int = REPLAY_BLOCK,
    tolerance: float = REPLAY_TOLERANCE,
    confidence: float = REPLAY_CONFIDENCE,
    stream: str = "replay",
) -> ReplayPass:
    """The verdict of one pass from paired latencies: `fresh_ns[i]` and `replay_ns[i]` are the
    same sample, fresh and replayed, consecutive samples `block` to a block (the last block
    may be shorter). Flagged when the lower bound on the median block ratio exceeds
    `1 + tolerance`."""
    if len(fresh_ns) != len(replay_ns):
        raise ValueError(f"{len(fresh_ns)} fresh latencies but {len(replay_ns)} replayed")
    fresh = np.asarray(fresh_ns, dtype=np.float64)
    replay = np.maximum(np.asarray(replay_ns, dtype=np.float64), 1.0)
    ratios = fresh / replay
    block_ratios = [
        float(np.median(ratios[first : first + block])) for first in range(0, ratios.size, block)
    ]
    if not block_ratios:
        return ReplayPass(stream, [], None, None, confidence, False)
    bound, reached = median_lower_bound(block_ratios, confidence)
    return ReplayPass(
        stream=stream,
        block_ratios=block_ratios,
        ratio=float(np.median(block_ratios)),
        lower_bound=bound,
        confidence=reached,
        flagged=bound > 1 + tolerance,
        fresh_median_ms=float(np.median(fresh)) / 1e6,
        replay_median_ms=float(np.median(replay)) / 1e6,
    )


def replay_check(
    target: Target,
    workload: AuditWorkload,
    count: int = 64,
    replays: int = 1,
    tolerance: float = REPLAY_TOLERANCE,
    timeout_s: float = 60.0,
    stream: str = "replay",
    block: int = REPLAY_BLOCK,
    *,
    confidence: float = REPLAY_CONFIDENCE,
    max_passes: int = REPLAY_PASSES,
) -> dict[str, Any]:
    """Fresh samples in blocks of `block`, each block then replayed in the same order
    (`replays` times). Flagged when, in every pass run (up to `max_passes`, each on new
    samples, the next one only while the last looked cached), the lower confidence bound on
    the median per-block ratio of paired fresh / replay latencies exceeds `1 + tolerance`;
    also flagged when queries failed. See the module docstring."""
    errors: list[str] = []

    def issue(query: dict[str, np.ndarray]) -> int | None:
        inputs = copy_inputs(query)
        start = time.perf_counter_ns()
        try:
            target.submit(inputs, start).result(timeout=timeout_s)
        except (LabError, TimeoutError) as exc:
            errors.append(str(exc))
            return None
        return time.perf_counter_ns() - start

    def measure(pass_stream: str) -> ReplayPass:
        failed_before = len(errors)
        queries = [workload.collate([s]) for s in workload.samples(count, pass_stream)]
        fresh: list[int | None] = []
        replayed: list[list[int]] = []
        for first in range(0, len(queries), block):
            chunk = queries[first : first + block]
            fresh.extend(issue(query) for query in chunk)
            timings: list[list[int]] = [[] for _ in chunk]
            for _ in range(replays):
                for i, query in enumerate(chunk):
                    elapsed = issue(query)
                    if elapsed is not None:
                        timings[i].append(elapsed)
            replayed.extend(timings)
        # Keep the samples answered both ways; the blocks stay as issued.
        pairs = [
            (float(f), float(np.median(r))) for f, r in zip(fresh, replayed) if f is not None and r
        ]
        decided = decide_replay(
            [f for f, _ in pairs],
            [r for _, r in pairs],
            block=block,
            tolerance=tolerance,
            confidence=confidence,
            stream=pass_stream,
        )
        decided.fresh_queries = sum(f is not None for f in fresh)
        decided.replay_queries = sum(len(r) for r in replayed)
        decided.errors = len(errors) - failed_before
        return decided

    for sample in workload.samples(min(count, block), f"{stream}-warmup"):
        issue(workload.collate([sample]))  # unmeasured: the first queries run cold
    passes = [measure(stream)]
    while passes[-1].flagged and len(passes) < max_passes:
        passes.append(measure(f"{stream}-confirm{len(passes)}"))
    last = passes[-1]
    result: dict[str, Any] = {
        "kind": "TEST04",
        "fresh_queries": sum(p.fresh_queries for p in passes),
        "replay_queries": sum(p.replay_queries for p in passes),
        "block": block,
        "tolerance": tolerance,
        "errors": errors[:5],
        "ratio": last.ratio,
        "lower_bound": last.lower_bound,
        "confidence": last.confidence,
        "fresh_median_ms": last.fresh_median_ms,
        "replay_median_ms": last.replay_median_ms,
        "passes": [p.to_dict() for p in passes],
    }
    limit = 1 + tolerance
    if last.ratio is None or last.lower_bound is None:
        result.update(flagged=True, reason="the replay check got no answers")
        return result
    result["flagged"] = last.flagged or bool(errors)
    if last.flagged:
        result["reason"] = (
            f"replayed samples ran {last.ratio:.2f}x faster than fresh ones (median of "
            f"paired per-block ratios; {last.confidence:.0%} lower bound {last.lower_bound:.2f}x "
            f"above the limit {limit:.2f}x in {len(passes)} of {len(passes)} passes, each on "
            f"new samples): results look cached"
        )
    elif errors:
        result["reason"] = f"{len(errors)} replay-check queries failed (first: {errors[0]})"
    elif len(passes) > 1:
        first = passes[0]
        assert first.lower_bound is not None
        result["reason"] = (
            f"not flagged: a first pass looked cached (lower bound {first.lower_bound:.2f}x "
            f"above {limit:.2f}x) but a re-measurement on new samples did not (ratio "
            f"{last.ratio:.2f}x, {last.confidence:.0%} lower bound {last.lower_bound:.2f}x)"
        )
    else:
        result["reason"] = (
            f"not flagged: replays ran {last.ratio:.2f}x as fast as fresh samples "
            f"({last.confidence:.0%} lower bound {last.lower_bound:.2f}x, limit {limit:.2f}x)"
        )
    return result
