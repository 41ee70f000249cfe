"""Input and output drift: population stability index (PSI) over a sliding window of rows.

    PSI = sum over bins i of (cur_i - ref_i) * ln(cur_i / ref_i)

where ref_i and cur_i are the shares of the reference and of the current window in bin i,
each floored at `FLOOR` (1e-4) so that an empty bin counts, finitely. PSI is 0 for identical
distributions and grows with the shift; it is symmetric in the two.

What is watched, per served model:

    inputs   each column of a fixed-shape float input (the ranker's 13 dense counts), binned at
             the reference's deciles; the real length of the first dynamic-axis input (the
             encoder's `input_ids`: tokens that are not padding), feature `<input>_length`
    outputs  a one-column output (the ranker's click probability) binned at the reference's
             deciles; an output of 2..32 columns (the encoder's logits) as its arg-max class
             share; wider outputs (embeddings) are not watched

The reference is the model's own reference workload (lab.workload, public seed, stream
"drift-reference"): its inputs give the input bins and shares; its outputs, computed by the
fallback runner (the trusted one; the primary when there is none) on a thread of its own
after startup, give the output bins and shares (output gauges appear once they are done).
Outputs computed by a built-in runner are kept next to the exported model
(`drift-outputs-*.npz`, keyed by its manifest), so the next start has them at once. Thresholds (the credit-scoring convention): PSI < 0.1 stable,
0.1 <= PSI < 0.25 warn, PSI >= 0.25 alert. With 2000 reference rows and a 1000-row window
the sampling noise alone gives an expected PSI near (bins - 1) * (1/2000 + 1/1000) = 0.014.

Cost: each executed batch is binned (one `searchsorted` per feature, on the batcher's thread,
after the batch is answered); the PSI itself is recomputed every `check_every_rows` rows and
at each scrape, from counts kept in a ring buffer, never per request.

Fallback policy (`action = "fallback"`): while any input feature is at alert, the model's
batches go to the fallback runner (route "fallback"), until every input feature is back
under the warn threshold (hysteresis, so the route does not flap at the threshold).
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lab.errors import ConfigError
from lab.repository import ModelHandle, TensorSpec

FLOOR = 1e-4
DECILES = np.linspace(0.0, 1.0, 11)[1:-1]
MAX_CLASSES = 32
OK, WARN, ALERT = 0, 1, 2
ACTIONS = ("alert", "fallback")
QUEUE_BATCHES = 256  # batches waiting to be binned before new ones are dropped
DRAIN_INTERVAL_S = 0.02  # the binning thread wakes at most this often


def psi(reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray) -> float:
    """PSI of two histograms (counts or shares over the same bins)."""
    ref = np.asarray(reference, np.float64)
    cur = np.asarray(current, np.float64)
    if ref.shape != cur.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"psi needs two histograms of one shape, got {ref.shape} {cur.shape}")
    if ref.sum() <= 0 or cur.sum() <= 0:
        raise ValueError("psi needs non-empty histograms")
    ref = np.maximum(ref / ref.sum(), FLOOR)
    cur = np.maximum(cur / cur.sum(), FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def level(value: float, warn: float, alert: float) -> int:
    return ALERT if value >= alert else WARN if value >= warn else OK


@dataclass
class DriftSettings:
    window_rows: int = 1000
    min_rows: int = 200
    warn_psi: float = 0.1
    alert_psi: float = 0.25
    action: str = "alert"
    reference_rows: int = 2000
    check_every_rows: int = 64

    def validate(self) -> DriftSettings:
        if self.window_rows < 10 or self.reference_rows < 10:
            raise ConfigError("drift-window-rows and drift-reference-rows must be at least 10")
        if not 1 <= self.min_rows <= self.window_rows:
            raise ConfigError("drift-min-rows must be between 1 and drift-window-rows")
        if not 0 < self.warn_psi < self.alert_psi:
            raise ConfigError("drift thresholds need 0 < drift-warn-psi < drift-alert-psi")
        if self.action not in ACTIONS:
            raise ConfigError(f"drift-action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.check_every_rows < 1:
            raise ConfigError("drift check interval must be at least 1 row")
        return self


class Feature:
    """One watched quantity of a batch, its bins and its reference counts.

    kind "column": column `column` of a (rows, k) tensor; "length": the entries of each row
    that are not `pad`; "class": the arg-max column of each row."""

    def __init__(
        self,
        name: str,
        tensor: str,
        reference: Mapping[str, np.ndarray],
        kind: str = "column",
        column: int = 0,
        pad: float = 0.0,
    ) -> None:
        self.name, self.tensor, self.kind, self.column, self.pad = name, tensor, kind, column, pad
        values = self.extract(reference)
        if kind == "class":
            classes = int(math.prod(reference[tensor].shape[1:]))
            self.edges = np.arange(0.5, classes - 1, 1.0)  # class c -> bin c
        else:
            self.edges = np.unique(np.quantile(values, DECILES))
        self.bins = len(self.edges) + 1
        self.reference_counts = np.bincount(self.bin(values), minlength=self.bins)

    def extract(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """(rows,) float64 values of this feature."""
        array = batch[self.tensor]
        flat = array.reshape(len(array), -1)
        if self.kind == "length":
            return (flat != self.pad).sum(axis=1).astype(np.float64)
        if self.kind == "class":
            return np.argmax(flat, axis=1).astype(np.float64)
        return flat[:, self.column].astype(np.float64)

    def bin(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, values, side="right")


def input_features(
    specs: Sequence[TensorSpec], reference: Mapping[str, np.ndarray]
) -> list[Feature]:
    """The watched inputs (module docstring) with their reference bins."""
    features = []
    dynamic_done = False
    for spec in specs:
        dims = spec.shape[1:]
        if -1 in dims:
            if not dynamic_done:
                dynamic_done = True
                features.append(
                    Feature(
                        f"{spec.name}_length", spec.name, reference, "length", pad=spec.pad_value
                    )
                )
        elif spec.dtype.startswith("float") and len(dims) == 1:
            for j in range(dims[0]):
                features.append(Feature(f"{spec.name}_{j}", spec.name, reference, column=j))
    return features


def output_features(
    specs: Sequence[TensorSpec], reference: Mapping[str, np.ndarray]
) -> list[Feature]:
    features = []
    for spec in specs:
        width = math.prod(spec.shape[1:])
        if width == 1:
            features.append(Feature(spec.name, spec.name, reference))
        elif 2 <= width <= MAX_CLASSES:
            features.append(Feature(f"{spec.name}_class", spec.name, reference, "class"))
    return features


class _Window:
    """The bin of each feature for the last `rows` rows, and running counts, all features at
    once: a batch costs about ten numpy calls whatever the number of features."""

    def __init__(self, features: Sequence[Feature], rows: int) -> None:
        self.features = list(features)
        n = len(self.features)
        self.width = max((f.bins for f in self.features), default=1)
        # Edges padded with +inf (never reached), one row per feature: (F, width - 1).
        self.edges = np.full((n, max(self.width - 1, 1)), np.inf)
        for i, f in enumerate(self.features):
            self.edges[i, : len(f.edges)] = f.edges
        self.offsets = np.arange(n) * self.width  # feature i's bins in the flat counts
        self.reference = np.zeros((n, self.width))
        for i, f in enumerate(self.features):
            self.reference[i, : f.bins] = f.reference_counts
        self.ring = np.zeros((rows, n), np.int64)  # flat bin index of each row and feature
        self.flat_counts = np.zeros(n * self.width, np.int64)
        self.size = 0
        self.next = 0
        # Column features of one tensor are read with one fancy index.
        groups: dict[str, tuple[list[int], list[int]]] = {}
        self._others: list[int] = []
        for i, f in enumerate(self.features):
            if f.kind == "column":
                where, columns = groups.setdefault(f.tensor, ([], []))
                where.append(i)
                columns.append(f.column)
            else:
                self._others.append(i)
        self._groups = [(t, np.array(w), np.array(c)) for t, (w, c) in groups.items()]

    @property
    def counts(self) -> list[np.ndarray]:
        table = self.flat_counts.reshape(len(self.features), self.width)
        return [table[i, : f.bins] for i, f in enumerate(self.features)]

    def values(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """(rows, F) feature values of one batch."""
        rows = len(next(iter(batch.values())))
        values = np.empty((rows, len(self.features)))
        for tensor, where, columns in self._groups:
            values[:, where] = batch[tensor].reshape(rows, -1)[:, columns]
        for i in self._others:
            values[:, i] = self.features[i].extract(batch)
        return values

    def add(self, batch: Mapping[str, np.ndarray], rows: int) -> None:
        if self.features:
            self.add_values(self.values(batch))

    def add_values(self, values: np.ndarray) -> None:
        """Rows of feature values (oldest first) into the window."""
        rows = len(values)
        if not self.features or not rows:
            return
        # searchsorted(side="right") for every feature at once: edges <= value.
        binned = (values[:, :, None] >= self.edges[None, :, :]).sum(axis=2) + self.offsets
        capacity = len(self.ring)
        if rows > capacity:
            binned, rows = binned[-capacity:], capacity
        slots = (self.next + np.arange(rows)) % capacity
        old = self.ring[slots[slots < self.size]]  # rows that leave the window
        size = len(self.flat_counts)
        if len(old):
            self.flat_counts -= np.bincount(old.ravel(), minlength=size)
        self.flat_counts += np.bincount(binned.ravel(), minlength=size)
        self.ring[slots] = binned
        self.size = min(capacity, self.size + rows)
        self.next = (self.next + rows) % capacity

    def psi(self) -> dict[str, float]:
        """PSI of every feature (as `psi()`; padded bins are 0 on both sides and add 0)."""
        current = self.flat_counts.reshape(len(self.features), self.width).astype(np.float64)
        ref = np.maximum(self.reference / self.reference.sum(axis=1, keepdims=True), FLOOR)
        cur = np.maximum(current / np.maximum(current.sum(axis=1, keepdims=True), 1), FLOOR)
        values = np.sum((cur - ref) * np.log(cur / ref), axis=1)
        return {f.name: float(v) for f, v in zip(self.features, values)}


def _merged(
    batches: Sequence[Mapping[str, np.ndarray]], window: _Window
) -> Mapping[str, np.ndarray]:
    """The tensors a window reads, concatenated over batches (padding the dynamic axes with
    each length feature's pad value), so that a pass over many batches costs one pass."""
    if len(batches) == 1:
        return batches[0]
    pads = {f.tensor: f.pad for f in window.features}
    merged = {}
    for name, pad in pads.items():
        arrays = [b[name] for b in batches]
        tail = tuple(max(a.shape[d] for a in arrays) for d in range(1, arrays[0].ndim))
        if all(a.shape[1:] == tail for a in arrays):
            merged[name] = np.concatenate(arrays)
            continue
        out = np.full((sum(len(a) for a in arrays), *tail), pad, arrays[0].dtype)
        row = 0
        for a in arrays:
            out[(slice(row, row + len(a)), *(slice(0, n) for n in a.shape[1:]))] = a
            row += len(a)
        merged[name] = out
    return merged


class DriftMonitor:
    """Sliding-window PSI of one model's inputs and outputs, and the drift fallback flag."""

    def __init__(
        self,
        inputs: Sequence[Feature],
        outputs: Sequence[Feature],
        settings: DriftSettings,
        output_specs: Sequence[TensorSpec] = (),
        output_reference_batches: Sequence[dict[str, np.ndarray]] = (),
        output_cache: Path | None = None,
    ) -> None:
        """`outputs`: output features known now; or else `output_reference_batches`, reference
        input batches that `start(trusted)` runs through the trusted runner on a thread of
        its own (output PSI appears once they are done, `output_ready` is set)."""
        self.settings = settings.validate()
        self._inputs = _Window(inputs, settings.window_rows)
        self._outputs = _Window(outputs, settings.window_rows)
        self._output_specs = tuple(output_specs)
        self._pending_reference = list(output_reference_batches)
        self._output_cache = output_cache
        self.output_ready = threading.Event()
        if not self._pending_reference:
            self.output_ready.set()
        self.output_error: str | None = None
        self._lock = threading.Lock()
        self._since_check = 0
        self.input_psi: dict[str, float] = {f.name: 0.0 for f in inputs}
        self.output_psi: dict[str, float] = {f.name: 0.0 for f in outputs}
        self.fallback_active = False
        self.observed_rows = 0
        self.dropped_batches = 0
        self._queue: queue.Queue[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None]
        self._queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self._observed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    # ----- off the request path: a thread of its own bins what the batcher hands over --------
    def start(
        self, trusted: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None
    ) -> DriftMonitor:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="servelab-drift", daemon=True)
            self._thread.start()
            if self._pending_reference and trusted is not None:
                threading.Thread(
                    target=self._reference_outputs,
                    args=(trusted,),
                    name="servelab-drift-reference",
                    daemon=True,
                ).start()
        return self

    def _reference_outputs(
        self, trusted: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
    ) -> None:
        try:
            parts = [dict(trusted(batch)) for batch in self._pending_reference]
        except Exception as exc:  # shown in statistics and metrics; serving goes on
            self.output_error = f"reference outputs failed: {exc}"
            self.output_ready.set()
            return
        outputs = {s.name: np.concatenate([p[s.name] for p in parts]) for s in self._output_specs}
        if self._output_cache is not None:
            _save(self._output_cache, outputs)
        self.use_reference_outputs(outputs)

    def use_reference_outputs(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Set the output bins and shares from reference outputs (all rows, batch first)."""
        features = output_features(self._output_specs, outputs)
        with self._lock:
            self._outputs = _Window(features, self.settings.window_rows)
            self.output_psi = {f.name: 0.0 for f in features}
            self._pending_reference = []
        self.output_ready.set()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5.0)
            self._thread = None

    def submit(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Hand over one answered batch; dropped (and counted) when the monitor lags behind."""
        try:
            self._queue.put_nowait((inputs, outputs))
        except queue.Full:
            with self._lock:
                self.dropped_batches += 1

    def _loop(self) -> None:
        """Drain what has queued, bin it in one pass, then let the next batches gather for
        DRAIN_INTERVAL_S: one pass per interval, not per batch, under load."""
        while True:
            items = [self._queue.get()]
            while len(items) < QUEUE_BATCHES:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in items
            self.observe_many([item for item in items if item is not None])
            if stop:
                return
            time.sleep(DRAIN_INTERVAL_S)

    def wait_observed(self, rows: int, timeout_s: float) -> bool:
        """Wait until at least `rows` rows have been observed (tests, drills)."""
        with self._observed:
            return self._observed.wait_for(lambda: self.observed_rows >= rows, timeout_s)

    @property
    def window_rows(self) -> int:
        return self._inputs.size if self._inputs.features else self._outputs.size

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Count one answered batch."""
        self.observe_many([(inputs, outputs)])

    def observe_many(
        self, items: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]
    ) -> None:
        """Count answered batches, oldest first, in one binning pass per window."""
        if not items:
            return
        with self._lock:
            rows = 0
            for window, part in ((self._inputs, 0), (self._outputs, 1)):
                if window.features:
                    values = window.values(_merged([item[part] for item in items], window))
                    window.add_values(values)
                    rows = len(values)
            if not rows:
                rows = sum(len(next(iter(i[0].values()))) for i in items)
            self.observed_rows += rows
            self._since_check += rows
            if self._since_check >= self.settings.check_every_rows:
                self._since_check = 0
                self._update()
            self._observed.notify_all()

    def _update(self) -> None:
        s = self.settings
        if self._inputs.size >= s.min_rows:
            self.input_psi = self._inputs.psi()
        if self._outputs.size >= s.min_rows:
            self.output_psi = self._outputs.psi()
        worst = max(self.input_psi.values(), default=0.0)
        if s.action == "fallback":
            if worst >= s.alert_psi:
                self.fallback_active = True
            elif worst < s.warn_psi:
                self.fallback_active = False

    def refresh(self) -> None:
        with self._lock:
            self._update()

    def status(self) -> int:
        s = self.settings
        values = [*self.input_psi.values(), *self.output_psi.values()]
        return max((level(v, s.warn_psi, s.alert_psi) for v in values), default=OK)

    def snapshot(self) -> dict[str, object]:
        self.refresh()
        return {
            "window_rows": self.window_rows,
            "observed_rows": self.observed_rows,
            "input_psi": dict(self.input_psi),
            "output_psi": dict(self.output_psi),
            "status": ("ok", "warn", "alert")[self.status()],
            "fallback_active": self.fallback_active,
            "dropped_batches": self.dropped_batches,
            "output_reference": "ready"
            if self.output_ready.is_set() and self.output_error is None
            else (self.output_error or "computing"),
            "warn_psi": self.settings.warn_psi,
            "alert_psi": self.settings.alert_psi,
            "action": self.settings.action,
        }


def _save(path: Path, outputs: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        arrays: dict[str, Any] = dict(outputs)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:  # a read-only model repository: no cache, nothing else changes
        tmp.unlink(missing_ok=True)


def output_cache_path(handle: ModelHandle, runner: str, rows: int) -> Path | None:
    """Where reference outputs computed by a built-in runner are kept, keyed by the exported
    version's manifest (a re-export changes the key); None for plugin runners, whose
    outputs are not trusted beyond this process."""
    if runner not in ("onnxruntime", "torch") or not handle.manifest_path.is_file():
        return None
    digest = hashlib.sha256(handle.manifest_path.read_bytes()).hexdigest()[:16]
    return handle.version_dir / f"drift-outputs-{runner}-{rows}-{digest}.npz"


def build_monitor(
    handle: ModelHandle,
    settings: DriftSettings,
    trusted_runner: str = "",
    output_rows: int | None = None,
    chunk_rows: int = 64,
) -> DriftMonitor:
    """A monitor for one model against its reference workload. Its reference outputs are
    computed after `start(trusted)` (a runner's infer) on the first `output_rows` (default:
    all) reference samples, in batches of `chunk_rows`, off the startup path, and kept in
    the model's version folder when `trusted_runner` is a built-in runner."""
    from lab.batcher import collate
    from lab.workload import Workload

    settings.validate()
    workload = Workload(handle, seed=handle.config.public_seed)
    samples = workload.samples(settings.reference_rows, stream="drift-reference")
    inputs = input_features(handle.inputs, collate(samples, handle.inputs))
    # Sorted by size so that each chunk pads little.
    rows = min(output_rows or settings.reference_rows, settings.reference_rows)
    cache = output_cache_path(handle, trusted_runner, rows)
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            outputs = {s.name: stored[s.name] for s in handle.outputs}
        monitor = DriftMonitor(inputs, (), settings, handle.outputs)
        monitor.use_reference_outputs(outputs)
        return monitor
    some = sorted(samples[:rows], key=lambda s: sum(a.size for a in s.values()))
    chunk = max(1, min(chunk_rows, handle.config.max_batch_size))
    batches = [collate(some[i : i + chunk], handle.inputs) for i in range(0, len(some), chunk)]
    return DriftMonitor(inputs, (), settings, handle.outputs, batches, cache)
