"""A synthetic model and a no-op runner for measuring the harness itself, and a caching
runner for checking that the replay check catches one.

`benchmarks/harness_overhead.py` drives the real harness (query source, dynamic batcher,
runner validation, issuing thread, recorder) against `NoopRunner`, so whatever it measures
is the harness's own cost. The synthetic model has one small input and one output and is
never exported: the no-op runner does not read files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lab.batcher import collate
from lab.repository import ModelConfig, ModelHandle, TensorSpec
from lab.runners.base import Runner
from lab.runners.onnxruntime import OnnxRuntimeRunner

INPUT = TensorSpec("x", "float32", (-1, 4))
OUTPUT = TensorSpec("y", "float32", (-1, 1))


def synthetic_handle(max_batch_size: int = 256, slo_ms: float = 10.0) -> ModelHandle:
    """A ModelHandle for a model with input x FP32 [-1, 4] and output y FP32 [-1, 1]."""
    config = ModelConfig(
        name="synthetic",
        max_batch_size=max_batch_size,
        inputs=(INPUT,),
        outputs=(OUTPUT,),
        slo_ms=slo_ms,
        default_size="tiny",
        sizes=("tiny",),
        max_queue_delay_us=0,
    )
    return ModelHandle("synthetic", "tiny", "fp32", config, Path("."))


class NoopRunner(Runner):
    """Returns zeros of the right shape without looking at the inputs."""

    name = "noop"

    def load_impl(self, model: ModelHandle) -> None:
        return None

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return {"y": np.zeros((inputs["x"].shape[0], 1), np.float32)}


class SyntheticWorkload:
    """Distinct samples for the synthetic model: row i of a seeded random matrix."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.input_specs = (INPUT,)

    seed_label = "synthetic"

    def rng(self, stream: str = "perf") -> np.random.Generator:
        return np.random.Generator(np.random.PCG64([self.seed, *stream.encode()]))

    def samples(self, n: int, stream: str = "perf") -> list[dict[str, np.ndarray]]:
        rows = self.rng(stream).standard_normal((n, 4), np.float32)
        return [{"x": rows[i : i + 1]} for i in range(n)]

    def collate(self, samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return collate(samples, self.input_specs)


class CachingRunner(OnnxRuntimeRunner):
    """Remembers outputs by input bytes: correct, and fast for anything seen before."""

    name = "caching"

    def __init__(self) -> None:
        super().__init__()
        self.cache: dict[bytes, dict[str, np.ndarray]] = {}

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        key = b"".join(inputs[k].tobytes() + str(inputs[k].shape).encode() for k in sorted(inputs))
        if key not in self.cache:
            self.cache[key] = dict(super().infer_impl(inputs))
        return self.cache[key]
