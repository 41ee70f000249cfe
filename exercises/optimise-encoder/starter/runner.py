"""Starter runner plugin for the optimise-encoder exercise: the shipped baseline.

It is the README's example runner: one ONNX Runtime CPU session (one intra-op thread,
default graph optimisations), each padded batch run as the batcher hands it over. Grading measures this file, unchanged, as
the baseline (score 0). Make it faster without changing what it computes; keep the class
name (or say in submission.toml which class to load).

    servelab verify --model encoder --runner submission/runner.py:CandidateRunner
    servelab bench --model encoder --runner submission/runner.py:CandidateRunner \
        --baseline onnxruntime --scenarios offline --scenarios find-peak
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.repository import ModelHandle
from lab.runners.base import Runner


class CandidateRunner(Runner):
    name = "optimise-encoder-starter"

    def __init__(self, threads: int = 1, **options: Any) -> None:
        super().__init__(threads=threads, **options)  # constructors only store options

    def load_impl(self, model: ModelHandle) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options["threads"])  # 0: one per core
        so.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model.onnx_path), so, providers=["CPUExecutionProvider"]
        )
        self.output_names = [spec.name for spec in model.outputs]

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        values = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, values))

    def close_impl(self) -> None:
        self.session = None
