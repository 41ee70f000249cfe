"""Reference solution for optimise-encoder (interviewer only: never packed).

Where the time goes on a CPU: the batcher pads every batch to its longest sample, and the
encoder's sequence lengths are log-normal (median 50 tokens, up to 256), so a batch of 16
carries about twice as many padding tokens as real ones, and the transformer computes every
one of them. This runner

1. trims each sample to its real length (the last position whose attention mask is 1),
2. sorts the batch by that length and cuts it into sub-batches whose lengths lie within
   `spread` of each other (plus `slack` tokens), so little padding is left, and
3. runs each sub-batch on one ONNX Runtime session with `threads` intra-op threads (1 by
   default: on 2 shared cores, one thread per session avoids the spin-wait contention of
   ONNX Runtime's thread pool) and scatters the outputs back into batch order.

Outputs do not change: padding never affects the real tokens (the model masks padded keys
and padded positions), so trimming only removes work. Measured on the 2-core CI machine:
see interviewer/notes.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.repository import ModelHandle
from lab.runners.base import Runner


class CandidateRunner(Runner):
    name = "optimise-encoder-reference"

    def __init__(
        self, threads: int = 1, spread: float = 1.3, slack: int = 8, **options: Any
    ) -> None:
        super().__init__(threads=threads, spread=spread, slack=slack, **options)

    def load_impl(self, model: ModelHandle) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options["threads"])
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model.onnx_path), so, providers=["CPUExecutionProvider"]
        )
        self.outputs = [(spec.name, tuple(spec.shape[1:])) for spec in model.outputs]

    def groups(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Indices of the batch in sub-batches of similar length, shortest first."""
        spread, slack = float(self.options["spread"]), int(self.options["slack"])
        order = np.argsort(lengths, kind="stable")
        found: list[np.ndarray] = []
        start = 0
        while start < order.size:
            end = start + 1
            limit = lengths[order[start]] * spread + slack
            while end < order.size and lengths[order[end]] <= limit:
                end += 1
            found.append(order[start:end])
            start = end
        return found

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        batch, width = mask.shape
        real = mask != 0
        # Real length: one past the last real token (0 for an all-padding row).
        lengths = np.where(real.any(axis=1), width - np.argmax(real[:, ::-1], axis=1), 0)
        lengths = np.maximum(lengths, 1)
        names = [name for name, _ in self.outputs]
        results = {name: np.empty((batch, *shape), np.float32) for name, shape in self.outputs}
        for index in self.groups(lengths):
            top = int(lengths[index].max())
            part = {
                "input_ids": np.ascontiguousarray(ids[index, :top]),
                "attention_mask": np.ascontiguousarray(mask[index, :top]),
            }
            for name, value in zip(names, self.session.run(names, part)):
                results[name][index] = value
        return results

    def close_impl(self) -> None:
        self.session = None
