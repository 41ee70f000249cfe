"""Ctrl-C in the middle of a run: answer honestly, and on the first batch of more than
`rows` rows (offline; single-stream only sends batches of one) send SIGINT to the harness,
as a user pressing Ctrl-C in its terminal would (the worker runs in its own session, so a
terminal's Ctrl-C reaches only the harness). The harness must write the report of the
scenarios that finished, marked partial, and exit non-zero."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class InterruptRunner(OrtRunner):
    name = "interrupt"

    def __init__(self, marker: str | None = None, rows: int = 1, **options: Any) -> None:
        super().__init__(marker=marker, rows=rows, **options)
        self.sent = False

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = next(iter(inputs.values())).shape[0]
        if batch > int(self.options["rows"]) and not self.sent:
            self.sent = True
            self.marker.update(interrupted=True, batch=batch)
            os.kill(os.getppid(), signal.SIGINT)
        return self.compute(inputs)
