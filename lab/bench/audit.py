"""Correctness inside the performance run (MLPerf TEST01) and the replay check (TEST04).

Audit: after a timed run, a random subset of the queries that completed during it is drawn
(seeded by the workload's seed, which includes the secret seed when one is set, so the
choice cannot be predicted) and their outputs are checked against the reference computed
from the harness's own pristine copies of the samples. The target only ever saw copies. A
run whose audited outputs fail is INVALID however fast it was.

Replay check: a cache keyed on the input makes a repeated sample much faster than a new
one. The check issues fresh samples in blocks of 16 and replays each block, in the same
order, right after it. Fresh and replayed queries use the same samples, so their median
latencies are comparable even for variable-length inputs (MLPerf's TEST04 replays a single
sample, which favours whatever length that sample has); the 15 queries between a sample and
its replay flush some of the hardware caches that make an honest replay a little faster.
A run whose replays are more than `tolerance` faster (ratio of medians) is flagged. MLPerf
uses 10% on large models; on small CPU models a sample's whole working set stays in cache
and honest replays ran up to 1.10x faster (ranker small, ONNX Runtime, 2 cores), while a
result cache ran 3.3-4.6x faster on the same model: the default is 25%.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lab.bench.engine import Sample, Segment, copy_inputs
from lab.bench.target import Target
from lab.errors import LabError

REPLAY_TOLERANCE = 0.25  # see the module docstring
REPLAY_BLOCK = 16


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

    def collate(self, samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]: ...


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
    """Check a random subset of the completed queries against the reference."""
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
    rng = workload.rng(f"{stream}-selection")
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


def replay_check(
    target: Target,
    workload: AuditWorkload,
    count: int = 64,
    replays: int = 1,
    tolerance: float = REPLAY_TOLERANCE,
    timeout_s: float = 60.0,
    stream: str = "replay",
    block: int = REPLAY_BLOCK,
) -> dict[str, Any]:
    """Fresh samples in blocks of `block`, each block then replayed in the same order
    (`replays` times); flagged when replays run more than `tolerance` faster (medians)."""
    fresh_ns: list[int] = []
    replay_ns: list[int] = []
    errors: list[str] = []

    def issue(query: dict[str, np.ndarray], into: list[int]) -> None:
        inputs = copy_inputs(query)
        start = time.perf_counter_ns()
        try:
            target.submit(inputs, start).result(timeout=timeout_s)
        except (LabError, TimeoutError) as exc:
            errors.append(str(exc))
            return
        into.append(time.perf_counter_ns() - start)

    queries = [workload.collate([sample]) for sample in workload.samples(count, stream)]
    for sample in workload.samples(min(count, block), f"{stream}-warmup"):
        issue(workload.collate([sample]), [])  # unmeasured: the first queries run cold
    for first in range(0, len(queries), block):
        chunk = queries[first : first + block]
        for query in chunk:
            issue(query, fresh_ns)
        for _ in range(replays):
            for query in chunk:
                issue(query, replay_ns)
    result: dict[str, Any] = {
        "kind": "TEST04",
        "fresh_queries": len(fresh_ns),
        "replay_queries": len(replay_ns),
        "block": block,
        "tolerance": tolerance,
        "errors": errors[:5],
    }
    if not fresh_ns or not replay_ns:
        result.update(ratio=None, flagged=True, reason="the replay check got no answers")
        return result
    fresh_median = float(np.median(fresh_ns))
    replay_median = float(np.median(replay_ns))
    ratio = fresh_median / replay_median if replay_median > 0 else float("inf")
    flagged = ratio > 1 + tolerance or bool(errors)
    result.update(
        fresh_median_ms=fresh_median / 1e6,
        replay_median_ms=replay_median / 1e6,
        ratio=ratio,
        flagged=flagged,
    )
    if ratio > 1 + tolerance:
        result["reason"] = (
            f"replayed samples ran {ratio:.2f}x faster than fresh ones (median "
            f"{replay_median / 1e6:.3f} ms vs {fresh_median / 1e6:.3f} ms; limit "
            f"{1 + tolerance:.2f}x): results look cached"
        )
    elif errors:
        result["reason"] = f"{len(errors)} replay-check queries failed (first: {errors[0]})"
    return result
