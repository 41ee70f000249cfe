"""Attack: answer honestly, then after `after` calls block forever (a deadlock, a lost
device). In the harness's own process the batcher thread never returns and neither does
the run."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class HangRunner(OrtRunner):
    name = "hang"

    def __init__(self, marker: str | None = None, after: int = 30, **options: Any) -> None:
        super().__init__(marker=marker, after=after, **options)
        self.calls = 0

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls > int(self.options["after"]):
            self.marker.update(calls=self.calls, hanging=True)
            threading.Event().wait()  # never set
        return self.compute(inputs)
