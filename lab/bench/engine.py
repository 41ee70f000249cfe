"""The load generator: issue queries to a target and record when each one was scheduled,
issued and completed.

It knows nothing about models. A `QuerySource` hands out queries (copies of sample arrays,
so a target that mutates its inputs cannot touch the pristine samples kept for the audit);
`run_open_loop` issues them at precomputed times (server, offline) and `run_closed_loop`
keeps `concurrency` queries in flight (single-stream, sweep). Both return a `Segment`: raw
per-query timings plus, when asked, the outputs for the audit.

Latency is always `done - scheduled`. For open-loop runs the scheduled time comes from the
arrival schedule, not from when the issuing thread got round to sending, so a stalled target
cannot hide its queueing (coordinated omission); for closed-loop runs a query is scheduled
the moment the previous one in its stream completed.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from lab.batcher import Completion, Tensors
from lab.bench.schedule import wait_until
from lab.bench.target import Target
from lab.errors import ConfigError, LabError

Sample = dict[str, np.ndarray]
Collate = Callable[[Sequence[Sample]], Tensors]
MAX_ERRORS_KEPT = 10
SWITCH_INTERVAL_S = 0.0005


@dataclass
class Query:
    inputs: Tensors  # what the target receives (copies)
    sample_ids: tuple[int, ...]  # indices into the source's pristine samples, one per row


def copy_inputs(inputs: Tensors) -> Tensors:
    return {name: np.array(value, copy=True) for name, value in inputs.items()}


def sample_digest(sample: Sample) -> int:
    """A fingerprint of a sample's names, dtypes, shapes and bytes (for spotting repeats
    within one run; Python's bytes hash is fast and 64 bits wide)."""
    return hash(
        tuple(
            (name, value.dtype.str, value.shape, value.tobytes())
            for name, value in sorted(sample.items())
        )
    )


class QuerySource:
    """Distinct samples turned into queries of `batch_size` samples each.

    Samples come from `draw(count, chunk)` (e.g. `lambda n, k: workload.samples(n, f"perf-{k}")`);
    when a closed-loop run needs more than were prepared, another chunk is drawn. Every
    sample is hashed so that a repeat is counted (a run's samples must all be distinct);
    sources that share `seen` count repeats across each other too.
    Query inputs are prepared (collated and copied) ahead of the timed run.
    """

    def __init__(
        self,
        draw: Callable[[int, int], Sequence[Sample]],
        collate: Collate,
        count: int,
        batch_size: int = 1,
        chunk: int = 0,
        seen: set[int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("batch size must be at least 1")
        self._draw = draw
        self._collate = collate
        self.batch_size = batch_size
        self.samples: list[Sample] = []
        self.queries: list[Query] = []
        self.duplicates = 0
        self.refills = 0
        self._seen: set[int] = set() if seen is None else seen
        self._chunk = chunk
        self._lock = threading.Lock()
        self._extend(max(1, count))

    def _extend(self, count: int) -> None:
        count = -(-count // self.batch_size) * self.batch_size
        new = list(self._draw(count, self._chunk))
        self._chunk += 1
        if len(new) != count:
            raise ConfigError(f"the workload returned {len(new)} samples, {count} were asked for")
        first = len(self.samples)
        for sample in new:
            key = sample_digest(sample)
            if key in self._seen:
                self.duplicates += 1
            self._seen.add(key)
        self.samples.extend(new)
        for start in range(first, len(self.samples), self.batch_size):
            ids = tuple(range(start, start + self.batch_size))
            batch = self._collate([self.samples[i] for i in ids])
            self.queries.append(Query(copy_inputs(batch), ids))

    def __len__(self) -> int:
        return len(self.queries)

    def get(self, index: int) -> Query:
        """Query `index`, drawing another chunk of samples if needed (closed loop only)."""
        if index >= len(self.queries):
            with self._lock:
                while index >= len(self.queries):
                    self.refills += 1
                    self._extend(max(len(self.samples) // 2, 64 * self.batch_size))
        return self.queries[index]


@dataclass
class Segment:
    """Raw timings of one timed run (one scenario, one target), in perf_counter ns."""

    kind: str  # "open" or "closed"
    t0_ns: int
    end_ns: int
    scheduled_ns: np.ndarray
    issued_ns: np.ndarray
    done_ns: np.ndarray
    queue_ns: np.ndarray
    compute_ns: np.ndarray
    batch_size: np.ndarray  # the size of the batch the query was executed in (0 if unknown)
    samples: np.ndarray  # samples per query
    ok: np.ndarray
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    outputs: dict[int, Tensors] = field(default_factory=dict)  # query index -> outputs
    sample_ids: list[tuple[int, ...]] = field(default_factory=list)
    concurrency: int = 0
    aborted: str | None = None  # why issuing stopped before the schedule's end

    @property
    def queries(self) -> int:
        return int(self.scheduled_ns.size)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.t0_ns)

    @property
    def latency_ns(self) -> np.ndarray:
        return (self.done_ns - self.scheduled_ns)[self.ok]

    @property
    def issue_lag_ns(self) -> np.ndarray:
        return self.issued_ns - self.scheduled_ns

    def completion_gaps(self) -> tuple[np.ndarray, np.ndarray]:
        """(gap_ns, samples) per successful completion in completion order; gaps start at t0.

        Throughput over any subset is sum(samples) / sum(gaps); the gaps never span time
        outside this segment, so segments of an alternating run can be pooled."""
        done = self.done_ns[self.ok]
        order = np.argsort(done, kind="stable")
        done_sorted = done[order]
        gaps = np.diff(np.concatenate([[self.t0_ns], done_sorted]))
        return np.maximum(gaps, 0), self.samples[self.ok][order]


class _Recorder:
    """Collects completions from future callbacks (which run on the target's threads)."""

    def __init__(self, keep_outputs: bool) -> None:
        self.keep_outputs = keep_outputs
        self.records: dict[int, tuple[int, int, int, int, bool]] = {}
        self.outputs: dict[int, Tensors] = {}
        self.errors: list[str] = []
        self.failed = 0
        self._lock = threading.Lock()
        self._outstanding = 0
        self._last_done_s = 0.0  # time.monotonic() of the latest completion
        self._idle = threading.Condition(self._lock)

    def expect(self) -> None:
        with self._lock:
            self._outstanding += 1

    def callback(
        self, index: int, wake: threading.Semaphore | None = None
    ) -> Callable[[Future[Completion]], None]:
        def done(future: Future[Completion]) -> None:
            now = time.perf_counter_ns()
            try:
                completion = future.result()
            except BaseException as exc:  # a failed query is recorded, never raised
                self.fail(index, now, exc)
            else:
                self.records[index] = (
                    now,
                    completion.queue_ns,
                    completion.compute_ns,
                    completion.batch_size,
                    True,
                )
                if self.keep_outputs:
                    self.outputs[index] = completion.outputs
                self._finish()
            if wake is not None:
                wake.release()

        return done

    def fail(self, index: int, now: int, exc: BaseException) -> None:
        self.records[index] = (now, 0, 0, 0, False)
        with self._lock:
            self.failed += 1
            if len(self.errors) < MAX_ERRORS_KEPT:
                kind = "" if isinstance(exc, LabError) else f"{type(exc).__name__}: "
                self.errors.append(f"{kind}{exc}")
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            self._outstanding -= 1
            self._last_done_s = time.monotonic()
            if self._outstanding == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float, give_up_after_s: float | None = None) -> str | None:
        """Wait until every issued query has completed. A no-progress watchdog: give up only
        when no query has completed for `timeout_s` (counted from this call at the earliest,
        i.e. after the last issue), so a long burst served slowly but steadily finishes
        while a stalled target fails within `timeout_s`. With `give_up_after_s`, also give
        up that long after this call whatever the progress. None when every query
        completed, else why the wait gave up."""
        called = time.monotonic()
        hard = None if give_up_after_s is None else called + give_up_after_s
        with self._lock:
            while self._outstanding > 0:
                now = time.monotonic()
                if hard is not None and now >= hard:
                    return f"no answer within {give_up_after_s} s of the last arrival"
                quiet_until = max(called, self._last_done_s) + timeout_s
                if now >= quiet_until:
                    return f"no answer within {timeout_s} s (none completed for that long)"
                self._idle.wait(min(quiet_until, hard if hard is not None else quiet_until) - now)
        return None


def _issue(
    target: Target,
    recorder: _Recorder,
    index: int,
    query: Query,
    scheduled_ns: int,
    wake: threading.Semaphore | None = None,
) -> int:
    """Submit one query; a synchronous refusal (e.g. Overloaded) is a failed query."""
    recorder.expect()
    issued = time.perf_counter_ns()
    try:
        future = target.submit(query.inputs, scheduled_ns)
    except Exception as exc:
        recorder.fail(index, time.perf_counter_ns(), exc)
        if wake is not None:
            wake.release()
        return issued
    future.add_done_callback(recorder.callback(index, wake))
    return issued


def _segment(
    kind: str,
    t0_ns: int,
    queries: Sequence[Query],
    scheduled: Sequence[int],
    issued: Sequence[int],
    recorder: _Recorder,
    timeout_s: float,
    concurrency: int = 0,
    end_ns: int = 0,
    give_up_after_s: float | None = None,
) -> Segment:
    n = len(issued)
    gave_up = recorder.wait_idle(timeout_s, give_up_after_s)
    records = dict(recorder.records)
    failed, errors = recorder.failed, list(recorder.errors)
    if gave_up is not None:
        missing = [i for i in range(n) if i not in records]
        failed += len(missing)
        errors.append(f"{len(missing)} queries got {gave_up}")
        now = time.perf_counter_ns()
        for i in missing:
            records[i] = (now, 0, 0, 0, False)
    rows = [records[i] for i in range(n)]
    done = np.array([r[0] for r in rows], dtype=np.int64)
    return Segment(
        kind=kind,
        t0_ns=t0_ns,
        end_ns=max(int(done.max()) if n else t0_ns, end_ns),
        scheduled_ns=np.asarray(scheduled[:n], dtype=np.int64),
        issued_ns=np.asarray(issued, dtype=np.int64),
        done_ns=done,
        queue_ns=np.array([r[1] for r in rows], dtype=np.int64),
        compute_ns=np.array([r[2] for r in rows], dtype=np.int64),
        batch_size=np.array([r[3] for r in rows], dtype=np.int64),
        samples=np.array([len(q.sample_ids) for q in queries[:n]], dtype=np.int64),
        ok=np.array([r[4] for r in rows], dtype=bool),
        failed=failed,
        errors=errors,
        outputs={i: o for i, o in recorder.outputs.items() if i < n},
        sample_ids=[q.sample_ids for q in queries[:n]],
        concurrency=concurrency,
    )


def run_open_loop(
    target: Target,
    queries: Sequence[Query],
    offsets_ns: np.ndarray,
    keep_outputs: bool = False,
    timeout_s: float = 60.0,
    lead_ns: int = 2_000_000,
    give_up_after_s: float | None = None,
    slo_ns: int | None = None,
) -> Segment:
    """Issue `queries[i]` at `t0 + offsets_ns[i]` from this thread (offline: all offsets 0).

    The issuing thread sleeps until ~200 us before each arrival and spins the rest; the
    actual submit time is recorded so the report can show the load generator's own lag.
    After the last issue it waits for the answers until none has come for `timeout_s` (a
    burst served slowly but steadily completes, a stalled target fails), and at most
    `give_up_after_s` when given; queries still unanswered then are failures.

    With `slo_ns`, issuing stops early once more than 1% of the planned queries certainly
    miss the SLO (issued that late, or still unanswered that long after their arrival):
    p99 cannot meet it any more, and a target that cannot keep up would otherwise queue
    without bound. The segment's `aborted` says so."""
    if len(offsets_ns) != len(queries):
        raise ConfigError("an open-loop run needs one arrival time per query")
    recorder = _Recorder(keep_outputs)
    # The issuing thread spins with the GIL held; a thread waiting for the GIL gets it only
    # after the switch interval (5 ms by default), so the issuer would wait up to 5 ms each
    # time the target's threads hold it. A 0.5 ms interval keeps the issue lag sub-ms.
    # The cyclic garbage collector is paused while issuing (as timeit does): a full
    # collection over a run's worth of futures stalls the issuer for milliseconds.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, SWITCH_INTERVAL_S))
    collecting = gc.isenabled()
    gc.disable()
    aborted: str | None = None
    try:
        t0 = time.perf_counter_ns() + lead_ns
        scheduled = (t0 + np.asarray(offsets_ns, dtype=np.int64)).tolist()
        issued: list[int] = []
        append = issued.append
        watch = SloWatch(scheduled, recorder, slo_ns) if slo_ns is not None else None
        for index, (query, when) in enumerate(zip(queries, scheduled)):
            if time.perf_counter_ns() < when:
                wait_until(when)
            append(_issue(target, recorder, index, query, when))
            if watch is not None and watch.hopeless(index, issued[-1]):
                aborted = watch.reason(index + 1)
                break
    finally:
        sys.setswitchinterval(previous)
        if collecting:
            gc.enable()
    last = scheduled[len(issued) - 1] if issued else t0
    segment = _segment(
        "open",
        t0,
        queries,
        scheduled,
        issued,
        recorder,
        timeout_s,
        end_ns=last,
        give_up_after_s=give_up_after_s,
    )
    segment.aborted = aborted
    return segment


class SloWatch:
    """Counts queries that certainly miss the SLO while an open-loop run issues."""

    EVERY = 16  # issues between checks of the unanswered queries

    def __init__(self, scheduled: list[int], recorder: _Recorder, slo_ns: int) -> None:
        self.scheduled = scheduled
        self.recorder = recorder
        self.slo_ns = slo_ns
        self.allowed = len(scheduled) // 100  # p99 survives at most 1% misses
        self.late_at_issue = 0
        self.misses = 0

    def hopeless(self, index: int, issued_ns: int) -> bool:
        if issued_ns - self.scheduled[index] > self.slo_ns:
            self.late_at_issue += 1
        if index % self.EVERY == 0:
            # Queries that arrived more than an SLO ago, less all answers so far: a lower
            # bound on those still unanswered past the SLO.
            older = bisect.bisect_left(self.scheduled, issued_ns - self.slo_ns, 0, index + 1)
            self.misses = max(self.misses, older - len(self.recorder.records))
        return max(self.late_at_issue, self.misses) > self.allowed

    def reason(self, issued: int) -> str:
        return (
            f"aborted after {issued} of {len(self.scheduled)} planned queries: more than 1% "
            f"of them ({max(self.late_at_issue, self.misses)}) already missed the "
            f"{self.slo_ns / 1e6:g} ms SLO, so p99 cannot meet it; the target (or the load "
            "generator) cannot keep up with this qps"
        )


def run_closed_loop(
    target: Target,
    source: QuerySource,
    concurrency: int = 1,
    min_duration_s: float = 0.0,
    min_queries: int = 0,
    max_queries: int | None = None,
    keep_outputs: bool = False,
    timeout_s: float = 60.0,
    until: Callable[[Segment], bool] | None = None,
    check_every_s: float = 1.0,
    max_duration_s: float | None = None,
) -> Segment:
    """Keep `concurrency` queries in flight (one thread per stream) until the minimum
    duration and query count are reached and, when `until` is given, `until(snapshot)` says
    the measurement is good enough (perf_analyzer keeps measuring until its windows agree),
    or until `max_duration_s` or `max_queries`."""
    if concurrency < 1:
        raise ConfigError("concurrency must be at least 1")
    limit = max_queries if max_queries is not None else 10**9
    recorder = _Recorder(keep_outputs)
    counter = itertools.count()
    scheduled: dict[int, int] = {}
    issued: dict[int, int] = {}
    stop = threading.Event()
    t0 = time.perf_counter_ns()
    min_end = t0 + int(min_duration_s * 1e9)
    longest = max(min_duration_s, max_duration_s or 0.0)
    max_end = t0 + int(longest * 1e9) if until is not None else min_end

    def stream() -> None:
        wake = threading.Semaphore(0)
        while not stop.is_set():
            index = next(counter)
            enough = until is None and index >= min_queries and time.perf_counter_ns() >= min_end
            if index >= limit or enough:
                stop.set()
                return
            query = source.get(index)
            now = time.perf_counter_ns()
            scheduled[index] = now
            issued[index] = _issue(target, recorder, index, query, now, wake)
            if not wake.acquire(timeout=timeout_s):
                stop.set()
                return

    threads = [
        threading.Thread(target=stream, name=f"bench-stream-{i}", daemon=True)
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    while not stop.is_set():
        now = time.perf_counter_ns()
        if (
            now >= min_end
            and len(recorder.records) >= min_queries
            and (
                now >= max_end
                or until is None
                or until(_snapshot(t0, now, source, scheduled, recorder))
            )
        ):
            break
        wait_ns = min_end - now if now < min_end else int(check_every_s * 1e9)
        if until is None and now >= min_end:
            wait_ns = 10_000_000  # the streams stop themselves at the query count
        stop.wait(max(wait_ns, 100_000) / 1e9)
    stop.set()
    for thread in threads:
        thread.join()
    stopped = time.perf_counter_ns()  # the run lasted until its streams stopped
    # Streams may stop between taking an index and issuing it: renumber what was issued.
    order = sorted(issued)
    return _segment(
        "closed",
        t0,
        [source.get(i) for i in order],
        [scheduled[i] for i in order],
        [issued[i] for i in order],
        _renumbered(recorder, order, timeout_s),
        timeout_s,
        concurrency=concurrency,
        end_ns=stopped,
    )


def _snapshot(
    t0: int, now: int, source: QuerySource, scheduled: dict[int, int], recorder: _Recorder
) -> Segment:
    """The completed part of a running closed-loop segment (for stopping decisions)."""
    records = dict(recorder.records)
    done = sorted(i for i in records if i in scheduled)
    rows = [records[i] for i in done]
    return Segment(
        kind="closed",
        t0_ns=t0,
        end_ns=now,
        scheduled_ns=np.array([scheduled[i] for i in done], dtype=np.int64),
        issued_ns=np.array([scheduled[i] for i in done], dtype=np.int64),
        done_ns=np.array([r[0] for r in rows], dtype=np.int64),
        queue_ns=np.array([r[1] for r in rows], dtype=np.int64),
        compute_ns=np.array([r[2] for r in rows], dtype=np.int64),
        batch_size=np.array([r[3] for r in rows], dtype=np.int64),
        samples=np.array([len(source.queries[i].sample_ids) for i in done], dtype=np.int64),
        ok=np.array([r[4] for r in rows], dtype=bool),
    )


def _renumbered(recorder: _Recorder, order: Sequence[int], timeout_s: float) -> _Recorder:
    """Wait for the recorder, then map its query indices to 0..len(order)-1."""
    recorder.wait_idle(timeout_s)
    if list(order) == list(range(len(order))):
        return recorder
    position = {old: new for new, old in enumerate(order)}
    renamed = _Recorder(recorder.keep_outputs)
    renamed.records = {position[i]: r for i, r in recorder.records.items() if i in position}
    renamed.outputs = {position[i]: o for i, o in recorder.outputs.items() if i in position}
    renamed.errors, renamed.failed = recorder.errors, recorder.failed
    return renamed
