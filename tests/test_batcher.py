"""The dynamic batcher: merging, padding, bounded queue, timeouts, draining."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lab.batcher import DynamicBatcher, QueueTimeout, collate, split
from lab.errors import ConfigError, InputError, Overloaded
from lab.repository import TensorSpec

IDS = TensorSpec("ids", "int64", (-1, -1), pad_value=0)
DENSE = TensorSpec("x", "float32", (-1, 3))


class Recorder:
    """An execute function that records batch sizes and echoes a per-row sum."""

    def __init__(self, gate: threading.Event | None = None, delay_s: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.gate = gate
        self.delay_s = delay_s
        self.entered = threading.Event()  # set once the worker is inside execute

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay_s:
            time.sleep(self.delay_s)
        self.sizes.append(batch["x"].shape[0])
        return {"sum": batch["x"].sum(axis=1, keepdims=True)}


def _request(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 3), value, np.float32)}


def test_collate_pads_dynamic_axes_to_the_longest_with_pad_value() -> None:
    a = {"ids": np.array([[1, 2, 3]], np.int64)}
    b = {"ids": np.array([[7]], np.int64)}
    batch = collate([a, b], [IDS])
    assert batch["ids"].tolist() == [[1, 2, 3], [7, 0, 0]]


def test_split_returns_independent_copies_per_request() -> None:
    outputs = {"y": np.arange(6).reshape(3, 2)}
    parts = split(outputs, [1, 2])
    assert [p["y"].shape for p in parts] == [(1, 2), (2, 2)]
    parts[0]["y"][:] = -1
    assert outputs["y"][0].tolist() == [0, 1]


def test_concurrent_requests_are_merged_up_to_max_batch_size() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    with DynamicBatcher(rec, [DENSE], max_batch_size=4, max_queue_delay_us=50_000) as batcher:
        first = batcher.submit(_request(0))  # occupies the worker until the gate opens
        assert rec.entered.wait(5)
        futures = [batcher.submit(_request(i)) for i in range(1, 9)]
        gate.set()
        results = [f.result(5) for f in [first, *futures]]
    assert rec.sizes[0] == 1
    assert rec.sizes[1:] == [4, 4]
    for i, completion in enumerate(results):
        assert completion.outputs["sum"].tolist() == [[3.0 * i]]
        assert completion.queue_ns >= 0 and completion.compute_ns >= 0


def test_a_lone_request_waits_at_most_the_queue_delay() -> None:
    rec = Recorder()
    with DynamicBatcher(rec, [DENSE], max_batch_size=8, max_queue_delay_us=1000) as batcher:
        completion = batcher.submit(_request(1)).result(5)
    assert completion.batch_size == 1
    assert rec.sizes == [1]


def test_preferred_batch_size_dispatches_without_waiting_for_the_delay() -> None:
    rec = Recorder()
    with DynamicBatcher(
        rec, [DENSE], max_batch_size=8, max_queue_delay_us=10_000_000, preferred_batch_sizes=[2]
    ) as batcher:
        completion = batcher.submit(_request(1, rows=2)).result(5)  # would wait 10 s otherwise
    assert completion.batch_size == 2


def test_full_queue_sheds_load_with_overloaded() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    with DynamicBatcher(rec, [DENSE], max_batch_size=1, max_queue_size=2) as batcher:
        batcher.submit(_request(0))
        assert rec.entered.wait(5)  # the worker holds the first request
        batcher.submit(_request(1))
        batcher.submit(_request(2))
        with pytest.raises(Overloaded, match="queue is full"):
            batcher.submit(_request(3))
        gate.set()


def test_request_past_its_timeout_fails_with_queue_timeout() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    with DynamicBatcher(rec, [DENSE], max_batch_size=1) as batcher:
        batcher.submit(_request(0))
        assert rec.entered.wait(5)
        late = batcher.submit(_request(1), timeout_s=0.01)
        time.sleep(0.05)
        gate.set()
        with pytest.raises(QueueTimeout, match="timed out"):
            late.result(5)


def test_execute_failure_reaches_every_request_in_the_batch() -> None:
    def boom(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("backend exploded")

    with DynamicBatcher(boom, [DENSE], max_batch_size=4, max_queue_delay_us=20_000) as batcher:
        futures = [batcher.submit(_request(i)) for i in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="backend exploded"):
                f.result(5)


def test_stop_with_drain_answers_everything_queued() -> None:
    rec = Recorder(delay_s=0.01)
    batcher = DynamicBatcher(rec, [DENSE], max_batch_size=2).start()
    futures = [batcher.submit(_request(i)) for i in range(10)]
    batcher.stop(drain=True)
    assert all(f.done() and f.exception() is None for f in futures)
    assert sum(rec.sizes) == 10


def test_oversized_request_and_bad_config_are_rejected() -> None:
    with pytest.raises(ConfigError):
        DynamicBatcher(Recorder(), [DENSE], max_batch_size=0)
    with pytest.raises(ConfigError, match="preferred"):
        DynamicBatcher(Recorder(), [DENSE], max_batch_size=4, preferred_batch_sizes=[8])
    with (
        DynamicBatcher(Recorder(), [DENSE], max_batch_size=2) as batcher,
        pytest.raises(InputError),
    ):
        batcher.submit(_request(0, rows=3))


def test_a_failed_merged_batch_is_split_and_only_the_culprit_fails() -> None:
    seen: list[int] = []

    def merged(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(batch["x"].shape[0])
        if (batch["x"] < 0).any():
            raise InputError("negative")
        return {"sum": batch["x"].sum(axis=1, keepdims=True)}

    alone_calls: list[float] = []

    def alone(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        alone_calls.append(float(batch["x"][0, 0]))
        return merged(batch)

    batcher = DynamicBatcher(
        merged,
        [DENSE],
        max_batch_size=8,
        max_queue_delay_us=600_000_000,
        preferred_batch_sizes=[3],
        execute_alone=alone,
    )
    with batcher:
        futures = [batcher.submit(_request(v)) for v in (1.0, -1.0, 2.0)]
        with pytest.raises(InputError, match="negative"):
            futures[1].result(10)
        assert futures[0].result(10).outputs["sum"].tolist() == [[3.0]]
        assert futures[2].result(10).outputs["sum"].tolist() == [[6.0]]
    assert seen[0] == 3  # one merged batch first, then each request alone
    assert sorted(alone_calls) == [-1.0, 1.0, 2.0]


def test_adaptive_policy_runs_a_lone_request_at_once_despite_a_long_delay() -> None:
    rec = Recorder()
    batcher = DynamicBatcher(
        rec, [DENSE], max_batch_size=8, max_queue_delay_us=600_000_000, policy="adaptive"
    )
    with batcher:
        # Under fixed_delay this would wait ten minutes; adaptive runs it while nothing else is.
        assert batcher.submit(_request(1.0)).result(30).outputs["sum"].tolist() == [[3.0]]
    assert rec.sizes == [1]


def test_adaptive_policy_batches_what_queues_while_a_batch_runs() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    batcher = DynamicBatcher(
        rec, [DENSE], max_batch_size=8, max_queue_delay_us=600_000_000, policy="adaptive"
    )
    with batcher:
        first = batcher.submit(_request(1.0))
        assert rec.entered.wait(10)  # the first request runs alone, holding the worker
        rest = [batcher.submit(_request(v)) for v in (2.0, 3.0, 4.0)]
        gate.set()
        assert first.result(30).batch_size == 1
        assert [f.result(30).batch_size for f in rest] == [3, 3, 3]
    assert rec.sizes == [1, 3]


def test_an_unknown_batch_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown batch policy 'eager'"):
        DynamicBatcher(Recorder(), [DENSE], max_batch_size=4, policy="eager")
