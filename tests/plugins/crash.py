"""Attack: answer honestly, then after `after` calls die hard (SIGSEGV, as a native crash in
a backend would). In the harness's own process this takes the whole run down with it: no
verdict, no report."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class CrashRunner(OrtRunner):
    name = "crash"

    def __init__(self, marker: str | None = None, after: int = 50, **options: Any) -> None:
        super().__init__(marker=marker, after=after, **options)
        self.calls = 0

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls > int(self.options["after"]):
            self.marker.update(calls=self.calls, crashing=True)
            os.kill(os.getpid(), signal.SIGSEGV)
        return self.compute(inputs)
