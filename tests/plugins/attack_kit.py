"""What the attack plugins share: honest ONNX Runtime compute, an evidence marker, a table.

Every other file in this folder is a runner plugin a dishonest candidate could submit
against the documented contract (README.md, "The runner contract"); the tests in
tests/test_isolation_attacks.py run each one through the real CLI. A plugin loads this
module by its path (plugins are single files imported by path, not a package).

Each plugin takes a runner option `marker` (a file path) and writes there a small JSON of
evidence about what its attack achieved: the pid it ran in, whether a patch was applied,
how many answers came from a precomputed table... It rewrites the file at each notable
event (atomically), because the process it runs in may be killed at any moment.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lab.repository import ModelHandle
from lab.runners.base import Runner

# The streams lab/bench/harness.py draws a candidate's single-stream run from (no baseline):
# Bench.stream(tag) numbers each tag's segments from 0 ("single-stream-candidate-0") and
# Bench.source draws chunk k of a segment from f"{stream}.{k}" (chunk 1 only when a closed
# loop outruns chunk 0: left out, 160 queries are evidence enough). The replay check
# (lab/bench/audit.py) uses "replay" and "replay-warmup". Values: how many samples of each
# stream to precompute (the first k of `samples(n)` are `samples(k)`: a prefix is enough).
PREDICTED_STREAMS: dict[str, int] = {
    "warmup-single-stream-candidate-0.0": 16,
    "single-stream-candidate-0.0": 160,
    "replay-warmup": 16,
    "replay": 64,
}


class Marker:
    """The evidence file: `update(**changes)` merges and rewrites it (None: no file)."""

    def __init__(self, path: str | None, **initial: Any) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, Any] = {"pid": os.getpid(), **initial}
        self.write()

    def update(self, **changes: Any) -> None:
        self.data.update(changes)
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.part")
        partial.write_text(json.dumps(self.data, sort_keys=True))
        os.replace(partial, self.path)  # a reader never sees half a file


def input_key(inputs: Mapping[str, np.ndarray]) -> bytes:
    """A digest of a query's names, shapes and bytes (the table key)."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        digest.update(name.encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.digest()


class OrtRunner(Runner):
    """The honest part: an ONNX Runtime session on the handle's ONNX graph, as in the README.

    Subclasses call `compute(inputs)` for real outputs and `self.marker` for evidence.
    """

    name = "attack-ort"

    def __init__(self, marker: str | None = None, threads: int = 0, **options: Any) -> None:
        super().__init__(marker=marker, threads=threads, **options)

    def load_impl(self, model: ModelHandle) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options["threads"])
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(model.onnx_path), so)
        self.output_names = [spec.name for spec in model.outputs]
        self.output_shapes = {spec.name: tuple(spec.shape[1:]) for spec in model.outputs}
        self.marker = Marker(self.options["marker"], runner=type(self).__name__)

    def compute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, dict(inputs))
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(self.output_names, values)}

    def zeros(self, batch: int) -> dict[str, np.ndarray]:
        """Outputs of the right names, shapes and dtype, computed from nothing."""
        return {
            name: np.zeros((batch, *shape), dtype=np.float32)
            for name, shape in self.output_shapes.items()
        }

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return self.compute(inputs)

    def close_impl(self) -> None:
        self.session = None


class TableRunner(OrtRunner):
    """Answers from a table of precomputed outputs keyed by input bytes; computes on a miss.

    A subclass fills the table in `load_impl` with `precompute(workload)`.
    """

    name = "attack-table"

    def load_impl(self, model: ModelHandle) -> None:
        super().load_impl(model)
        self.table: dict[bytes, dict[str, np.ndarray]] = {}
        self.hits = 0
        self.misses = 0
        self.marker.update(table_size=0, table_hits=0, misses=0)

    def precompute(self, workload: Any) -> None:
        """Outputs for the first samples of every stream the harness is expected to use."""
        for stream, count in PREDICTED_STREAMS.items():
            for sample in workload.samples(count, stream):
                self.table[input_key(sample)] = self.compute(sample)
        self.marker.update(table_size=len(self.table))

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        found = self.table.get(input_key(inputs))
        if found is None:
            self.misses += 1
            if self.misses % 32 == 1:  # cheaply: the count matters, not its last digit
                self.marker.update(misses=self.misses)
            return self.compute(inputs)
        self.hits += 1
        self.marker.update(table_hits=self.hits, misses=self.misses)
        return {name: value.copy() for name, value in found.items()}
