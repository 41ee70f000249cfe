"""Cheat: a result cache keyed by the input bytes. Every answer is right (a miss is computed
honestly and remembered), only a repeated input is answered from memory: the replay check
flags it."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lab.repository import ModelHandle

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner, input_key  # noqa: E402


class ResultCacheRunner(OrtRunner):
    name = "result-cache"

    def load_impl(self, model: ModelHandle) -> None:
        super().load_impl(model)
        self.cache: dict[bytes, dict[str, np.ndarray]] = {}

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        key = input_key(inputs)
        if key not in self.cache:
            self.cache[key] = self.compute(inputs)
        return {name: value.copy() for name, value in self.cache[key].items()}
