"""A runner that does no work: zeros of each output's shape and dtype, at once (or after
`delay_ms` per batch, to play a slow target). For measuring the harness itself at settings
no model could serve (`--qps 1000000`); its outputs fail any audit, which is not under test."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.repository import ModelHandle
from lab.runners.base import Runner


class NoopRunner(Runner):
    name = "noop-plugin"

    def __init__(self, delay_ms: float = 0.0, **options: Any) -> None:
        super().__init__(delay_ms=delay_ms, **options)

    def load_impl(self, model: ModelHandle) -> None:
        self.shapes = {spec.name: (spec.dtype, spec.shape[1:]) for spec in model.outputs}

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if float(self.options["delay_ms"]) > 0:
            time.sleep(float(self.options["delay_ms"]) / 1e3)
        batch = next(iter(inputs.values())).shape[0]
        return {
            name: np.zeros(
                (batch, *(d if isinstance(d, int) and d > 0 else 1 for d in shape)), dtype
            )
            for name, (dtype, shape) in self.shapes.items()
        }
