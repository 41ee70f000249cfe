"""Verify a runner: run the stored reference set through it and check every output.

Samples go through the runner in batches of `batch_size`, padded to the longest sample in
the batch (as the dynamic batcher would), so a runner that mishandles padding fails here.
"""

from __future__ import annotations

import numpy as np

from lab.batcher import collate, split
from lab.check import Checker, CheckResult
from lab.errors import ConfigError, RunnerError
from lab.export import load_reference
from lab.repository import ModelHandle
from lab.runners.base import Runner


def run_samples(
    runner: Runner, handle: ModelHandle, samples: list[dict[str, np.ndarray]], batch_size: int = 1
) -> list[dict[str, np.ndarray]]:
    """Outputs of `runner` for each sample (batch dim 1 each), in padded batches."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if batch_size > handle.config.max_batch_size:
        raise ConfigError(
            f"batch size {batch_size} exceeds {handle.name}'s max_batch_size "
            f"{handle.config.max_batch_size}"
        )
    if not runner.is_loaded:
        raise RunnerError(f"runner {runner.name} is not loaded: call load(model) first")
    outputs: list[dict[str, np.ndarray]] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = runner.infer(collate(chunk, handle.inputs))
        outputs.extend(split(batch, [1] * len(chunk)))
    return outputs


def verify(
    handle: ModelHandle, runner: Runner, batch_size: int = 1, limit: int | None = None
) -> CheckResult:
    """Check a loaded runner against the stored reference set (the first `limit` samples)."""
    reference = load_reference(handle)
    count = len(reference.samples) if limit is None else min(limit, len(reference.samples))
    actual = run_samples(runner, handle, reference.samples[:count], batch_size)
    return Checker.for_model(handle).check(actual, reference.outputs[:count])
