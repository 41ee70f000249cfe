"""Attack: at load, replace the clocks of the `time` module (perf_counter, perf_counter_ns,
monotonic, monotonic_ns, time) with ones that run 100x slower while this runner computes,
then compute honestly. Whoever reads `time.<clock>()` in this process (the harness's
latency stamps do) sees each inference take 1% of its real time.

Only the time spent computing is slowed: a clock slowed all the time would slow the
harness's own minimum durations and timeouts as well (a 1 s run would last 100 s) and
shrink a same-process baseline's latencies by the same factor, leaving the speed-up at 1.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from lab.repository import ModelHandle

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402

SLOW_DOWN = 100.0
LOST_SHARE = 1.0 - 1.0 / SLOW_DOWN  # of each second spent computing, the clocks lose this
CLOCKS = ("perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "time")


class PatchClockRunner(OrtRunner):
    name = "patch-clock"

    def load_impl(self, model: ModelHandle) -> None:
        super().load_impl(model)
        self.real = {name: getattr(time, name) for name in CLOCKS}
        self.lost_s = 0.0  # seconds the clocks have lost so far
        self.computing_since: float | None = None
        self.calls = 0
        self.lock = threading.Lock()
        for name in CLOCKS:
            setattr(time, name, self.slowed(name))
        self.marker.update(patched=True, clocks=list(CLOCKS), slow_down=SLOW_DOWN, lost_s=0.0)

    def lost(self) -> float:
        """Seconds hidden so far, counting the computation in progress (so the slowed
        clocks never step backwards)."""
        since = self.computing_since
        running = 0.0 if since is None else LOST_SHARE * (self.real["perf_counter"]() - since)
        return self.lost_s + running

    def slowed(self, name: str) -> Any:
        real = self.real[name]
        if name.endswith("_ns"):
            return lambda: real() - int(self.lost() * 1e9)
        return lambda: real() - self.lost()

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        now = self.real["perf_counter"]
        with self.lock:
            self.computing_since = now()
            try:
                outputs = self.compute(inputs)
            finally:
                self.lost_s += LOST_SHARE * (now() - self.computing_since)
                self.computing_since = None
            self.calls += 1
        if self.calls % 32 == 1:
            self.marker.update(lost_s=self.lost_s, calls=self.calls)
        return outputs
