"""Attack: in `load()`, regenerate the benchmark's workload from the public seed (the model's
config.toml, `lab.workload.Workload` and the stream names lab/bench/harness.py uses),
compute the outputs of the samples the run will send, and answer from that table, keyed by
the input bytes. A hit costs a dict look-up; a miss is computed honestly, so the answers
are always right and only the speed is fake.

The marker also records a digest of the first 16 queries received (`first_inputs`), so a
test can tell whether two runs sent the same workload."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lab.repository import ModelHandle

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import TableRunner, input_key  # noqa: E402

FIRST_INPUTS = 16


class PrecomputeRunner(TableRunner):
    name = "precompute"

    def load_impl(self, model: ModelHandle) -> None:
        from lab.workload import Workload

        super().load_impl(model)
        self.first: list[bytes] = []
        self.marker.update(seed=model.config.public_seed, first_inputs=None)
        self.precompute(Workload(model, seed=model.config.public_seed))

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if len(self.first) < FIRST_INPUTS:
            self.first.append(input_key(inputs))
            if len(self.first) == FIRST_INPUTS:
                digest = hashlib.sha256(b"".join(self.first)).hexdigest()
                self.marker.update(first_inputs=digest)
        return super().infer_impl(inputs)
