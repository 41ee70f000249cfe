"""Dynamic batcher shared by the in-process target and the server.

Requests (dicts of arrays, batch dimension first, any batch size up to max_batch_size) wait
in a bounded queue; a worker thread merges them into one batch when the batch is full, when
it reaches a preferred size and nothing else is waiting, or when the oldest request has
waited `max_queue_delay_us`. Inputs with dynamic axes are padded to the longest request in
the batch with the input's `pad_value` (the baseline strategy). Each request's future
resolves to a `Completion` with its own slice of the outputs and its queue/compute split.
Given `execute_alone`, a merged batch that fails is split: each request is retried alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from lab.errors import ConfigError, InputError, Overloaded, ServeError
from lab.repository import TensorSpec

Tensors = dict[str, np.ndarray]

# When a batch leaves the queue:
#   fixed_delay  full, at a preferred size, or when the oldest request has waited
#                max_queue_delay_us (Triton's dynamic batcher; the harness's default, so the
#                exercises' baseline keeps the numbers it was measured with)
#   adaptive     as fixed_delay, and also at once whenever no other batch is executing: a lone
#                request never waits, and under load the requests that queue while a batch
#                runs form the next one (the server's default)
FIXED_DELAY, ADAPTIVE = "fixed_delay", "adaptive"
POLICIES = (FIXED_DELAY, ADAPTIVE)


class QueueTimeout(ServeError):
    """A request waited in the queue longer than its timeout."""


@dataclass
class Completion:
    outputs: Tensors
    batch_size: int
    enqueue_ns: int
    start_ns: int
    end_ns: int

    @property
    def queue_ns(self) -> int:
        return self.start_ns - self.enqueue_ns

    @property
    def compute_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass
class _Pending:
    inputs: Tensors
    size: int
    enqueue_ns: int
    deadline_ns: int
    future: Future[Completion] = field(default_factory=Future)


def batch_size_of(inputs: Mapping[str, np.ndarray]) -> int:
    for value in inputs.values():
        return int(value.shape[0]) if value.ndim else 1
    raise InputError("a request needs at least one input")


def collate(requests: Sequence[Mapping[str, np.ndarray]], specs: Sequence[TensorSpec]) -> Tensors:
    """Concatenate requests along the batch axis, padding dynamic axes to the longest."""
    if len(requests) == 1:
        return dict(requests[0])
    batch: Tensors = {}
    for spec in specs:
        arrays = [r[spec.name] for r in requests]
        longest = tuple(max(a.shape[d] for a in arrays) for d in range(1, arrays[0].ndim))
        if all(a.shape[1:] == longest for a in arrays):
            batch[spec.name] = np.concatenate(arrays, axis=0)
            continue
        total = sum(a.shape[0] for a in arrays)
        out = np.full((total, *longest), spec.pad_value, dtype=arrays[0].dtype)
        row = 0
        for a in arrays:
            out[(slice(row, row + a.shape[0]), *(slice(0, n) for n in a.shape[1:]))] = a
            row += a.shape[0]
        batch[spec.name] = out
    return batch


def split(outputs: Mapping[str, np.ndarray], sizes: Sequence[int]) -> list[Tensors]:
    """Cut batched outputs back into per-request dicts (copies, so requests never share memory)."""
    parts: list[Tensors] = []
    row = 0
    for n in sizes:
        parts.append({k: np.array(v[row : row + n]) for k, v in outputs.items()})
        row += n
    return parts


class DynamicBatcher:
    """Merge concurrent requests into batches for `execute(batch_inputs) -> batch_outputs`."""

    def __init__(
        self,
        execute: Callable[[Tensors], Mapping[str, np.ndarray]],
        input_specs: Sequence[TensorSpec],
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_size: int = 0,
        default_timeout_s: float | None = None,
        workers: int = 1,
        execute_alone: Callable[[Tensors], Mapping[str, np.ndarray]] | None = None,
        policy: str = FIXED_DELAY,
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError("max_batch_size must be at least 1")
        if max_queue_delay_us < 0:
            raise ConfigError("max_queue_delay_us must be >= 0")
        if policy not in POLICIES:
            raise ConfigError(
                f"unknown batch policy {policy!r} (choose from {', '.join(POLICIES)})"
            )
        if any(p < 1 or p > max_batch_size for p in preferred_batch_sizes):
            raise ConfigError("preferred batch sizes must lie between 1 and max_batch_size")
        self.execute = execute
        # With execute_alone, a batch of one request goes to it, and a merged batch that
        # fails is split: each of its requests is retried alone, so only the culprit fails.
        self.execute_alone = execute_alone
        self.policy = policy
        self.input_specs = tuple(input_specs)
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ns = max_queue_delay_us * 1000
        self.preferred = frozenset(preferred_batch_sizes)
        self.max_queue_size = max_queue_size
        self.default_timeout_s = default_timeout_s
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._inflight = 0
        self._threads = [
            threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True)
            for i in range(workers)
        ]
        self.on_batch: Callable[[int, int, int], None] | None = None  # (size, start_ns, end_ns)

    # ----- lifecycle -------------------------------------------------------------------
    def start(self) -> DynamicBatcher:
        self._running = True
        for t in self._threads:
            t.start()
        return self

    def stop(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Stop taking work; with drain, finish everything queued first."""
        deadline = time.monotonic() + timeout_s
        if drain:
            with self._cond:
                while (self._queue or self._inflight) and time.monotonic() < deadline:
                    self._cond.wait(0.01)
        with self._cond:
            self._running = False
            leftover = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for item in leftover:
            item.future.set_exception(ServeError("server is shutting down"))
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> DynamicBatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pending(self) -> int:
        """Requests queued or executing."""
        return len(self._queue) + self._inflight

    # ----- submit ----------------------------------------------------------------------
    def submit(
        self, inputs: Tensors, timeout_s: float | None = None, enqueue_ns: int | None = None
    ) -> Future[Completion]:
        size = batch_size_of(inputs)
        if size > self.max_batch_size:
            raise InputError(f"batch size {size} exceeds max_batch_size {self.max_batch_size}")
        now = time.perf_counter_ns() if enqueue_ns is None else enqueue_ns
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        deadline = now + int(timeout * 1e9) if timeout else 0
        item = _Pending(inputs, size, now, deadline)
        with self._cond:
            if not self._running:
                raise ServeError("batcher is not running")
            if self.max_queue_size and len(self._queue) >= self.max_queue_size:
                raise Overloaded(
                    f"queue is full ({self.max_queue_size} requests waiting); retry later"
                )
            self._queue.append(item)
            self._cond.notify()
        return item.future

    # ----- worker ----------------------------------------------------------------------
    def _take_batch(self) -> list[_Pending] | None:
        with self._cond:
            while self._running and not self._queue:
                self._cond.wait()
            if not self._running:
                return None
            first_deadline = self._queue[0].enqueue_ns + self.max_queue_delay_ns
            while True:
                total, count = 0, 0
                for item in self._queue:
                    if total + item.size > self.max_batch_size:
                        break
                    total += item.size
                    count += 1
                full = total >= self.max_batch_size or count < len(self._queue)
                # Adaptive: no other batch is executing, so waiting cannot fill this one any
                # faster than running it; requests that arrive meanwhile form the next batch.
                idle = self.policy == ADAPTIVE and self._inflight == 0
                now = time.perf_counter_ns()
                if full or idle or total in self.preferred or now >= first_deadline:
                    break
                if not self._running:
                    break
                self._cond.wait((first_deadline - now) / 1e9)
                if not self._queue:  # another worker took everything while this one waited
                    return []
            batch = [self._queue.popleft() for _ in range(count)]
            self._inflight += len(batch)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._inflight -= len(batch)
                    self._cond.notify_all()

    def _run(self, batch: list[_Pending]) -> None:
        start = time.perf_counter_ns()
        live = []
        for item in batch:
            if item.deadline_ns and start > item.deadline_ns:
                waited_ms = (start - item.enqueue_ns) / 1e6
                item.future.set_exception(
                    QueueTimeout(f"request timed out after {waited_ms:.1f} ms in the queue")
                )
            elif item.future.set_running_or_notify_cancel():
                live.append(item)
        if not live:
            return
        alone = self.execute_alone
        execute = alone if alone is not None and len(live) == 1 else self.execute
        try:
            outputs = execute(collate([i.inputs for i in live], self.input_specs))
            parts = split(outputs, [i.size for i in live])
        except BaseException as exc:  # every accepted request gets an answer, even a failure
            if alone is not None and len(live) > 1 and isinstance(exc, Exception):
                for item in live:  # split and retry: only the culprit fails
                    self._run_alone(alone, item)
                return
            for item in live:
                item.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        end = time.perf_counter_ns()
        size = sum(i.size for i in live)
        if self.on_batch is not None:
            self.on_batch(size, start, end)
        for item, part in zip(live, parts):
            item.future.set_result(Completion(part, size, item.enqueue_ns, start, end))

    def _run_alone(
        self, execute: Callable[[Tensors], Mapping[str, np.ndarray]], item: _Pending
    ) -> None:
        start = time.perf_counter_ns()
        try:
            outputs = dict(execute(item.inputs))
        except Exception as exc:
            item.future.set_exception(exc)
            return
        end = time.perf_counter_ns()
        if self.on_batch is not None:
            self.on_batch(item.size, start, end)
        item.future.set_result(Completion(outputs, item.size, item.enqueue_ns, start, end))
