"""The model-serving core, independent of transport.

`ModelServer` holds one `ModelState` per served model: the handle, a primary runner and a
fallback runner behind the shared DynamicBatcher, a circuit breaker, and statistics. REST
and gRPC decode a request into checked arrays (lab.protocol.codec), call `ModelServer.infer`,
and encode what comes back.

Where a batch goes (run by the batcher's worker thread):

    several requests merged (`_execute_merged`)
        breaker closed or probing -> primary; if it fails, nothing is counted: the batcher
                                     splits the batch and retries each request alone
        breaker open              -> fallback
    one request (`_execute_alone`, also each request of a failed merged batch)
        primary ok                -> answer; a probe closes the breaker
        primary InputError        -> 400, never the fallback, never counted
        primary fails otherwise   -> the fallback answers; the failure counts towards opening
                                     the breaker and the request towards fallback_requests
        fallback fails too        -> 400 "model rejected the input" (the input, not the
                                     primary: nothing is counted); without a fallback, 500

Inputs outside the model's declared limits never get here: the codec rejects them first.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lab import __version__
from lab.batcher import ADAPTIVE, DynamicBatcher, Tensors, batch_size_of
from lab.errors import ConfigError, InputError, LabError, ModelNotFound, RunnerError
from lab.protocol.codec import InferRequest, ModelSpec
from lab.repository import VERSION, ModelHandle, ModelRepository
from lab.runners import create_runner
from lab.runners.base import Runner
from lab.serve.breaker import CLOSED, CircuitBreaker
from lab.serve.config import ServeConfig
from lab.serve.drift import DriftMonitor, build_monitor
from lab.serve.errors import BatchFailed, ShuttingDown, failure_reason

SERVER_NAME = "servelab"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "parameters")

# Triton platform names for the built-in runners; plugins report servelab_<name>.
PLATFORMS = {
    "onnxruntime": "onnxruntime_onnx",
    "torch": "pytorch_libtorch",
    "tensorrt": "tensorrt_plan",
}

PRIMARY, FALLBACK = 0, 1
ROUTES = ("primary", "fallback")
# A pseudo-output the execute function adds so that the batcher's split hands every request
# its batch's route and execute timings: int64 (rows, 3) = route, exec_start_ns, exec_end_ns.
_INFO = "__servelab_batch_info__"


@dataclass
class Counter:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchCounters:
    compute_input: Counter = field(default_factory=Counter)
    compute_infer: Counter = field(default_factory=Counter)
    compute_output: Counter = field(default_factory=Counter)


class ModelStats:
    """Triton's statistics for one model version. Request counters are per request (a batched
    request is charged its batch's compute time); execution counters are per batch."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.success = Counter()
        self.fail = Counter()
        self.fail_reasons: dict[str, int] = {}  # Triton's reason label -> count
        self.queue = Counter()
        self.compute_input = Counter()
        self.compute_infer = Counter()
        self.compute_output = Counter()
        self.inference_count = 0
        self.execution_count = 0
        self.fallback_requests = 0
        self.inline_requests = 0  # run on the event loop (ModelState.run_inline)
        self.last_inference_ms = 0
        self.batches: dict[int, BatchCounters] = {}

    def record_success(
        self,
        rows: int,
        duration_ns: int,
        queue_ns: int,
        split_ns: tuple[int, int, int],
        fallback: bool,
    ) -> None:
        with self.lock:
            self.success.add(duration_ns)
            self.queue.add(queue_ns)
            self.compute_input.add(split_ns[0])
            self.compute_infer.add(split_ns[1])
            self.compute_output.add(split_ns[2])
            self.inference_count += rows
            self.fallback_requests += int(fallback)
            self.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, duration_ns: int, reason: str = "OTHER") -> None:
        with self.lock:
            self.fail.add(duration_ns)
            self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1

    def record_batch(self, size: int, split_ns: tuple[int, int, int]) -> None:
        with self.lock:
            self.execution_count += 1
            counters = self.batches.get(size)
            if counters is None:
                counters = self.batches[size] = BatchCounters()
            counters.compute_input.add(split_ns[0])
            counters.compute_infer.add(split_ns[1])
            counters.compute_output.add(split_ns[2])

    def to_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.to_dict(),
                    "fail": self.fail.to_dict(),
                    "queue": self.queue.to_dict(),
                    "compute_input": self.compute_input.to_dict(),
                    "compute_infer": self.compute_infer.to_dict(),
                    "compute_output": self.compute_output.to_dict(),
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": c.compute_input.to_dict(),
                        "compute_infer": c.compute_infer.to_dict(),
                        "compute_output": c.compute_output.to_dict(),
                    }
                    for size, c in sorted(self.batches.items())
                ],
                "fallback_requests": self.fallback_requests,
                "inline_requests": self.inline_requests,
            }


@dataclass
class Answer:
    """What `ModelServer.infer` returns: outputs plus where and how long."""

    outputs: dict[str, np.ndarray]
    rows: int  # this request's batch size
    batch_size: int  # the executed batch's size
    queue_ns: int
    compute_ns: int
    route: str
    split_ns: tuple[int, int, int] = (0, 0, 0)  # compute input, infer, output

    def parameters(self) -> dict[str, Any]:
        return {
            "servelab_batch_size": self.batch_size,
            "servelab_queue_ns": self.queue_ns,
            "servelab_compute_ns": self.compute_ns,
            "servelab_runner": self.route,
        }


class ModelState:
    """One served model: runners behind a batcher, a breaker and statistics."""

    def __init__(
        self,
        handle: ModelHandle,
        primary: Runner,
        fallback: Runner | None,
        config: ServeConfig,
        drift: DriftMonitor | None = None,
    ) -> None:
        model_max = handle.config.max_batch_size
        max_batch = config.max_batch_size or model_max
        if max_batch > model_max:
            raise ConfigError(
                f"max-batch-size {max_batch} is over model {handle.name}'s max_batch_size "
                f"{model_max}"
            )
        delay_us = handle.config.max_queue_delay_us
        if config.max_queue_delay_us is not None:
            delay_us = config.max_queue_delay_us
        preferred = handle.config.preferred_batch_sizes
        if config.preferred_batch_sizes is not None:
            preferred = config.preferred_batch_sizes
        preferred = tuple(p for p in preferred if p <= max_batch)
        self.handle = handle
        self.primary = primary
        self.fallback = fallback
        self.config = config
        self.spec = ModelSpec(handle.name, VERSION, handle.inputs, handle.outputs, max_batch)
        self.max_queue_delay_us = delay_us
        self.preferred_batch_sizes = preferred
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_probe_s)
        self.drift = drift
        self.stats = ModelStats()
        self.batcher = DynamicBatcher(
            self._execute_merged,
            handle.inputs,
            max_batch_size=max_batch,
            max_queue_delay_us=delay_us,
            preferred_batch_sizes=preferred,
            max_queue_size=config.max_queue_size,
            default_timeout_s=config.request_timeout_s or None,
            workers=config.batcher_workers,
            execute_alone=self._execute_alone,
            policy=config.batch_policy,
        )
        self.batcher.on_batch = self._on_batch
        self._primary_lock = threading.Lock()
        self._fallback_lock = threading.Lock()
        self._primary_pool = (
            ThreadPoolExecutor(1, thread_name_prefix=f"primary-{handle.name}")
            if config.primary_timeout_s
            else None
        )
        self._local = threading.local()
        # Moving average of a lone request's execution per row, whatever answered it.
        self.alone_ms_per_row: float | None = None
        self.ready = False

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def degraded(self) -> bool:
        return self.breaker.degraded

    @property
    def drift_fallback(self) -> bool:
        """True while the drift policy sends this model's batches to the fallback."""
        return self.drift is not None and self.drift.fallback_active and self.fallback is not None

    def start(self) -> None:
        if self.drift is not None:  # reference outputs from the trusted runner
            self.drift.start(self._run_fallback if self.fallback is not None else self._run_primary)
        self.batcher.start()
        self.ready = True

    def close(self, timeout_s: float = 5.0) -> None:
        self.ready = False
        self.batcher.stop(drain=True, timeout_s=timeout_s)
        if self._primary_pool is not None:
            self._primary_pool.shutdown(wait=False, cancel_futures=True)
        if self.drift is not None:
            self.drift.close()
        self.primary.close()
        if self.fallback is not None:
            self.fallback.close()

    # ----- execution (batcher worker threads) -------------------------------------------
    def _run_primary(self, batch: Tensors) -> dict[str, np.ndarray]:
        timeout_s = self.config.primary_timeout_s
        if self._primary_pool is None:
            with self._primary_lock:
                return self.primary.infer(batch)

        def call() -> dict[str, np.ndarray]:
            with self._primary_lock:
                return self.primary.infer(batch)

        future = self._primary_pool.submit(call)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()
            raise RunnerError(
                f"primary runner {self.primary.name} took longer than {timeout_s:g} s"
            ) from None

    def _run_fallback(self, batch: Tensors) -> dict[str, np.ndarray]:
        assert self.fallback is not None
        with self._fallback_lock:
            return self.fallback.infer(batch)

    def _execute_merged(self, batch: Tensors) -> dict[str, np.ndarray]:
        """A batch of several requests. Any failure here is left to the batcher, which retries
        each request alone (`_execute_alone`): nothing is counted against the primary and
        nobody is sent to the fallback until one request on its own shows whose fault it is."""
        rows = batch_size_of(batch)
        start = time.perf_counter_ns()
        if not self.drift_fallback and self.breaker.allow_primary():
            try:
                outputs = self._run_primary(batch)
            except LabError:
                self.breaker.record_inconclusive()  # a probe in flight waits for the next one
                raise
            self.breaker.record_success()
            return self._with_info(outputs, rows, PRIMARY, start, batch)
        if self.fallback is None:  # pragma: no cover - the breaker never opens without one
            raise RunnerError(f"runner {self.primary.name} is unavailable")
        return self._with_info(self._run_fallback(batch), rows, FALLBACK, start, batch)

    def _execute_alone(self, batch: Tensors) -> dict[str, np.ndarray]:
        """One request: the primary; on a runner fault the fallback answers and the fault
        counts towards the breaker. An input error never reaches the fallback. Its wall
        time, however it ended, feeds `alone_ms_per_row` (see `may_run_inline`)."""
        rows = batch_size_of(batch)
        start = time.perf_counter_ns()
        try:
            return self._execute_alone_routed(batch, rows, start)
        finally:
            per_row_ms = (time.perf_counter_ns() - start) / 1e6 / max(1, rows)
            before = self.alone_ms_per_row
            self.alone_ms_per_row = (
                per_row_ms if before is None else 0.8 * before + 0.2 * per_row_ms
            )

    def _execute_alone_routed(self, batch: Tensors, rows: int, start: int) -> dict[str, np.ndarray]:
        primary_error: LabError | None = None
        if not self.drift_fallback and self.breaker.allow_primary():
            try:
                outputs = self._run_primary(batch)
            except InputError:
                self.breaker.record_inconclusive()
                raise
            except LabError as exc:
                primary_error = exc
            else:
                self.breaker.record_success()
                return self._with_info(outputs, rows, PRIMARY, start, batch)
        if self.fallback is None:
            assert primary_error is not None
            raise BatchFailed(f"runner {self.primary.name} failed: {primary_error}", rows)
        try:
            outputs = self._run_fallback(batch)
        except InputError:
            self.breaker.record_inconclusive()
            raise
        except LabError as exc:
            if primary_error is not None:
                self.breaker.record_inconclusive()
                message = f"primary: {primary_error}; fallback: {exc}"
            else:
                message = str(exc)
            raise InputError(f"model {self.name} rejected the input: {message}") from exc
        if primary_error is not None:
            self.breaker.record_failure(str(primary_error))
        return self._with_info(outputs, rows, FALLBACK, start, batch)

    def _with_info(
        self, outputs: dict[str, np.ndarray], rows: int, route: int, start: int, batch: Tensors
    ) -> dict[str, np.ndarray]:
        end = time.perf_counter_ns()
        if self.drift is not None:  # binned on the monitor's own thread
            self.drift.submit(batch, outputs)
        self._local.last = (start, end)
        info = np.empty((rows, 3), np.int64)
        info[:] = (route, start, end)
        return {**outputs, _INFO: info}

    def may_run_inline(self, rows: int) -> bool:
        """Whether a request of `rows` rows may run on the caller's (the event loop's) thread
        now, which then serves nothing else until it is done. Only when all of these hold:
        the fast path is on under the adaptive policy; nothing is queued or executing and
        neither runner's lock is held (the drift monitor may be computing its reference);
        the breaker is closed and drift sends nothing to the fallback (no probe, no
        fallback answer runs here); no runner waits on anything outside this process
        (`Runner.may_stall`) and no primary-timeout thread is in play; and lone requests,
        however they were answered, have taken under `inline_max_compute_ms` for this many
        rows."""
        limit_ms = self.config.inline_max_compute_ms
        per_row_ms = self.alone_ms_per_row
        fallback = self.fallback
        return (
            limit_ms > 0
            and per_row_ms is not None
            and per_row_ms * rows < limit_ms
            and self.batcher.policy == ADAPTIVE
            and self.batcher.pending == 0
            and not self._primary_lock.locked()
            and not self._fallback_lock.locked()
            and self.breaker.state == CLOSED
            and not self.drift_fallback
            and self._primary_pool is None
            and not self.primary.may_stall
            and (fallback is None or not fallback.may_stall)
        )

    def run_inline(self, request: InferRequest) -> Answer:
        """One request executed on this thread, exactly as the batcher runs a lone request
        (`_execute_alone`: breaker, fallback, drift, statistics), without its two thread
        hand-offs. The caller checked `may_run_inline(rows)`; the primary's lock still guards the
        runner against a batch that a gRPC request started meanwhile."""
        start = time.perf_counter_ns()
        outputs = dict(self._execute_alone(request.inputs))
        end = time.perf_counter_ns()
        self._on_batch(request.rows, start, end)
        with self.stats.lock:
            self.stats.inline_requests += 1
        route, exec_start, exec_end = (int(v) for v in outputs.pop(_INFO)[0])
        split = (exec_start - start, exec_end - exec_start, end - exec_end)
        return Answer(outputs, request.rows, request.rows, 0, end - start, ROUTES[route], split)

    def _on_batch(self, size: int, start_ns: int, end_ns: int) -> None:
        exec_start, exec_end = getattr(self._local, "last", (start_ns, end_ns))
        self.stats.record_batch(
            size, (exec_start - start_ns, exec_end - exec_start, end_ns - exec_end)
        )

    # ----- descriptions ----------------------------------------------------------------
    @property
    def platform(self) -> str:
        return PLATFORMS.get(self.primary.name, f"servelab_{self.primary.name}")

    def parameters(self) -> dict[str, Any]:
        return {
            "runner": self.primary.name,
            "fallback_runner": self.fallback.name if self.fallback else "none",
            "degraded": self.degraded,
            "size": self.handle.size,
            "precision": self.handle.precision,
        }

    def metadata(self) -> dict[str, Any]:
        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": self.platform,
            "inputs": tensors(self.handle.inputs),
            "outputs": tensors(self.handle.outputs),
            "parameters": self.parameters(),
        }

    def model_config(self) -> dict[str, Any]:
        """Triton's model configuration, as JSON (what perf_analyzer reads)."""

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [
                {"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": list(s.dims)}
                for s in specs
            ]

        queue_policy: dict[str, Any] = {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": int(self.config.request_timeout_s * 1e6),
            "allow_timeout_override": True,
            "max_queue_size": self.config.max_queue_size,
        }
        return {
            "name": self.name,
            "platform": self.platform,
            "backend": self.primary.name,
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": self.spec.max_batch_size,
            "input": tensors(self.handle.inputs),
            "output": tensors(self.handle.outputs),
            "dynamic_batching": {
                "preferred_batch_size": list(self.preferred_batch_sizes),
                "max_queue_delay_microseconds": self.max_queue_delay_us,
                "default_queue_policy": queue_policy,
            },
            "instance_group": [
                {"name": f"{self.name}_0", "kind": "KIND_CPU", "count": self.config.batcher_workers}
            ],
            "parameters": {k: {"string_value": str(v)} for k, v in self.parameters().items()},
        }

    def statistics(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": VERSION,
            **self.stats.to_dict(),
            "degraded": self.degraded,
            "breaker": self.breaker.snapshot(),
            **({"drift": self.drift.snapshot()} if self.drift is not None else {}),
            "pending_request_count": self.batcher.pending,
        }


def _load_runner(spec: str, options: Mapping[str, Any], handle: ModelHandle) -> Runner:
    runner = create_runner(spec, dict(options))
    runner.load(handle)
    return runner


def load_model(repository: ModelRepository, name: str, config: ServeConfig) -> ModelState:
    """Open a model and its runners (exporting it first when asked and needed)."""
    handle = repository.handle(name, config.size, config.precision)
    if config.export:
        from lab.export import ensure_exported

        ensure_exported(handle)
    primary = _load_runner(config.runner, config.runner_options, handle)
    fallback = None
    if config.fallback_runner != "none":
        try:
            fallback = _load_runner(config.fallback_runner, config.fallback_options, handle)
        except LabError:
            primary.close()
            raise
    drift = None
    if config.drift:
        try:
            trusted = config.fallback_runner if fallback is not None else config.runner
            drift = build_monitor(handle, config.drift_settings(), trusted)
        except BaseException:
            primary.close()
            if fallback is not None:
                fallback.close()
            raise
    return ModelState(handle, primary, fallback, config, drift)


class ModelServer:
    """The models a server holds, readiness and draining, and the transport-free infer call."""

    def __init__(self, models: Mapping[str, ModelState]) -> None:
        self.models = dict(models)
        self.live = True
        self.draining = False
        self._inflight = 0

    @classmethod
    def from_config(cls, config: ServeConfig) -> ModelServer:
        repository = ModelRepository(config.model_repository)
        models: dict[str, ModelState] = {}
        try:
            for name in config.model:
                if name in models:
                    raise ConfigError(f"model {name!r} is listed twice")
                models[name] = load_model(repository, name, config)
        except BaseException:
            for state in models.values():
                state.close()
            raise
        return cls(models)

    def start(self) -> ModelServer:
        for state in self.models.values():
            state.start()
        return self

    @property
    def ready(self) -> bool:
        return self.live and not self.draining and all(m.ready for m in self.models.values())

    @property
    def inflight(self) -> int:
        return self._inflight

    def model(self, name: str, version: str | None = None) -> ModelState:
        state = self.models.get(name)
        if state is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"unknown model {name!r} (serving: {known})")
        if version not in (None, "", VERSION):
            raise ModelNotFound(f"model {name!r} has no version {version!r} (versions: {VERSION})")
        return state

    def metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model in the repository folder, served or not
        (a model this server did not load is UNAVAILABLE, as under Triton's explicit mode)."""
        roots = {state.handle.directory.parent for state in self.models.values()}
        names = set(self.models)
        for root in roots:
            names.update(ModelRepository(root).names())
        index = []
        for name in sorted(names):
            state = self.models.get(name)
            if state is not None and state.ready and not self.draining:
                index.append({"name": name, "version": VERSION, "state": "READY", "reason": ""})
            elif not ready_only:
                reason = "not loaded by this server" if state is None else "not ready"
                index.append(
                    {"name": name, "version": VERSION, "state": "UNAVAILABLE", "reason": reason}
                )
        return index

    @contextlib.contextmanager
    def accepting(self) -> Iterator[None]:
        """Count an infer request as in flight until its response is built."""
        if self.draining:
            raise ShuttingDown("server is shutting down and takes no new requests")
        self._inflight += 1
        try:
            yield
        finally:
            self._inflight -= 1

    async def infer(
        self, model: ModelState, request: InferRequest, lone_connection: bool = False
    ) -> Answer:
        """Queue one checked request and wait for its answer (call inside `accepting()`).

        `lone_connection`: the transport has no other connection open. Then a request that
        is the only one in flight runs on this (the event loop's) thread when the model
        allows it (`ModelState.may_run_inline`): at concurrency 1 nothing could join its
        batch, and the batcher's hand-offs would be its only cost. (A request on another
        transport that arrives meanwhile waits for this one, as it would behind the batcher
        running it alone.)"""
        if lone_connection and self._inflight == 1 and model.may_run_inline(request.rows):
            try:
                return model.run_inline(request)
            except BatchFailed as exc:
                raise RunnerError(str(exc)) from exc
        future = model.batcher.submit(request.inputs, request.timeout_s)
        try:
            completion = await asyncio.wrap_future(future)
        except BatchFailed as exc:  # the primary failed this request alone, with no fallback
            raise RunnerError(str(exc)) from exc
        outputs = completion.outputs
        route, exec_start, exec_end = (int(v) for v in outputs.pop(_INFO)[0])
        return Answer(
            outputs,
            request.rows,
            completion.batch_size,
            completion.queue_ns,
            completion.compute_ns,
            ROUTES[route],
            (
                exec_start - completion.start_ns,
                exec_end - exec_start,
                completion.end_ns - exec_end,
            ),
        )

    def record(
        self,
        model: ModelState,
        received_ns: int,
        answer: Answer | None,
        error: BaseException | None = None,
    ) -> None:
        """Charge one finished request (answer None: it failed with `error`) to the model's
        statistics."""
        duration = time.perf_counter_ns() - received_ns
        if answer is None:
            model.stats.record_failure(duration, failure_reason(error))
        else:
            model.stats.record_success(
                answer.rows, duration, answer.queue_ns, answer.split_ns, answer.route == "fallback"
            )

    def begin_drain(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False when the grace period ran out first."""
        deadline = time.monotonic() + timeout_s
        while self._inflight or any(m.batcher.pending for m in self.models.values()):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        self.live = False
        for state in self.models.values():
            state.close(timeout_s)
