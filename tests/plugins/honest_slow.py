"""Calibration: an honest plugin slower than the optimise-encoder reference. It is the
reference solution (loaded by path from the exercise's interviewer/ folder; so this file is
never packed) plus a deliberate idle wait of `slow_down` times each batch's compute time,
so it lands between the starter (score 0) and the reference (score 1). Outputs are the
reference's, exact."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

SOLUTION = (
    Path(__file__).resolve().parents[2]
    / "exercises/optimise-encoder/interviewer/solution/runner.py"
)
_spec = importlib.util.spec_from_file_location("optimise_encoder_reference", SOLUTION)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)


class HonestSlowRunner(_module.CandidateRunner):  # type: ignore[misc, name-defined]
    name = "honest-slow"

    def __init__(self, slow_down: float = 1.0, **options: Any) -> None:
        super().__init__(slow_down=slow_down, **options)
        self.idle = threading.Event()  # never set: a wait that is only a wait

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Any:
        started = time.perf_counter()
        outputs = super().infer_impl(inputs)
        self.idle.wait((time.perf_counter() - started) * float(self.options["slow_down"]))
        return outputs
