"""Cheat: answer zeros of the right names, shapes and dtype, computing nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class ZerosRunner(OrtRunner):
    name = "zeros"

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.zeros(len(inputs[next(iter(inputs))]))
