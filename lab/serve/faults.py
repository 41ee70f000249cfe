"""Fault injection for drills and tests: a runner that fails or stalls on demand.

    servelab serve --runner lab.serve.faults:FaultyRunner --runner-option fail=true
    servelab serve --runner lab.serve.faults:FaultyRunner --runner-option delay_s=0.2
    servelab serve --runner lab.serve.faults:FaultyRunner --runner-option fail_while=/tmp/down
    servelab serve --runner lab.serve.faults:FaultyRunner --runner-option corrupt=true
    servelab serve --runner lab.serve.faults:FaultyRunner --runner-option poison=12345

It wraps the ONNX Runtime CPU runner. Options: `fail` (every batch raises), `fail_while`
(a path: batches raise while that file exists, so a drill can break and heal the primary
from outside), `delay_s` (sleep before each batch: a slow or stalled primary), `corrupt`
(answer fast with every output halved: a wrong answer that looks healthy), `poison` (a
number: a batch fails when any input holds it, so one request can fail its batch), plus any
OnnxRuntimeRunner option.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lab.runners.onnxruntime import OnnxRuntimeRunner


class InjectedFault(RuntimeError):
    """What a FaultyRunner raises (the base runner turns it into a RunnerError)."""


class FaultyRunner(OnnxRuntimeRunner):
    name = "faulty"

    def __init__(
        self,
        fail: bool = False,
        fail_while: str = "",
        delay_s: float = 0.0,
        corrupt: bool = False,
        poison: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.options.update(
            fail=fail, fail_while=fail_while, delay_s=delay_s, corrupt=corrupt, poison=poison
        )
        self.calls = 0

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.calls += 1
        delay_s = float(self.options["delay_s"])
        if delay_s:
            time.sleep(delay_s)
        if self.options["fail"]:
            raise InjectedFault("injected failure (fail=true)")
        marker = str(self.options["fail_while"])
        if marker and Path(marker).exists():
            raise InjectedFault(f"injected failure (while {marker} exists)")
        poison = self.options["poison"]
        if poison is not None and any(bool((v == poison).any()) for v in inputs.values()):
            raise InjectedFault(f"injected failure (an input holds the poison value {poison})")
        outputs = super().infer_impl(inputs)
        if self.options["corrupt"]:
            return {name: value * 0.5 for name, value in outputs.items()}
        return outputs
