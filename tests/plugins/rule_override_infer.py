"""Rule breaker: overrides the public `infer()` instead of `infer_impl()`, so the base
class's input validation, timing and output checks never run."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class OverrideInferRunner(OrtRunner):
    name = "override-infer"

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.marker.update(skipped_validation=True)
        return self.compute(inputs)
