"""Input and output drift monitoring for `servelab serve`.

Switched off during the March incident ("the monitor was too slow on the hot path") and
never brought back: every method below keeps the interface the server uses (core.py,
metrics.py, config.py) and does nothing. The gauges it exports therefore read 0.

What it should do (the runbook's words): compare the inputs and outputs the server sees over
a sliding window with the model's reference workload (lab/workload.py) using the population
stability index, per feature; warn at PSI 0.1, alert at 0.25; with `--drift-action fallback`,
route to the fallback runner while an input is at alert, and back once all are under warn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lab.errors import ConfigError
from lab.repository import ModelHandle, TensorSpec

OK, WARN, ALERT = 0, 1, 2
ACTIONS = ("alert", "fallback")


def psi(reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray) -> float:
    """Population stability index of two histograms over the same bins."""
    raise NotImplementedError("psi is not implemented")


@dataclass
class DriftSettings:
    window_rows: int = 1000
    min_rows: int = 200
    warn_psi: float = 0.1
    alert_psi: float = 0.25
    action: str = "alert"
    reference_rows: int = 2000
    check_every_rows: int = 64

    def validate(self) -> DriftSettings:
        if self.action not in ACTIONS:
            raise ConfigError(f"drift-action {self.action!r} is not one of {', '.join(ACTIONS)}")
        return self


class DriftMonitor:
    """Disabled: observes nothing, reports 0."""

    def __init__(self, settings: DriftSettings, input_names: Sequence[str] = ()) -> None:
        self.settings = settings.validate()
        self.input_psi: dict[str, float] = {name: 0.0 for name in input_names}
        self.output_psi: dict[str, float] = {}
        self.fallback_active = False
        self.observed_rows = 0
        self.dropped_batches = 0
        self.window_rows = 0
        self.output_ready = threading.Event()
        self.output_ready.set()

    def start(self, trusted: Callable[..., Mapping[str, np.ndarray]] | None = None) -> DriftMonitor:
        return self

    def close(self) -> None:
        return None

    def submit(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        return None  # disabled in the March incident

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        return None

    def wait_observed(self, rows: int, timeout_s: float) -> bool:
        return self.observed_rows >= rows

    def refresh(self) -> None:
        return None

    def status(self) -> int:
        return OK

    def snapshot(self) -> dict[str, object]:
        return {
            "window_rows": self.window_rows,
            "observed_rows": self.observed_rows,
            "input_psi": dict(self.input_psi),
            "output_psi": dict(self.output_psi),
            "status": "ok",
            "fallback_active": self.fallback_active,
            "dropped_batches": self.dropped_batches,
            "warn_psi": self.settings.warn_psi,
            "alert_psi": self.settings.alert_psi,
            "action": self.settings.action,
        }


def build_monitor(
    handle: ModelHandle,
    settings: DriftSettings,
    trusted_runner: str = "",
    output_rows: int | None = None,
    chunk_rows: int = 64,
) -> DriftMonitor:
    names = [s.name for s in handle.inputs if isinstance(s, TensorSpec)]
    return DriftMonitor(settings, names)
