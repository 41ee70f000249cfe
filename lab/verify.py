"""Verify a runner: run reference samples through it and check every output.

Samples go through the runner in batches, padded to the longest sample in the batch (as the
dynamic batcher would). By default (`verify_runner`) three checks run, and all must pass:

- the stored reference set at batch 1;
- the stored reference set in padded batches of mixed lengths (longest and shortest samples
  side by side), so a runner that is exact only at batch 1, or that lets padding leak into
  real samples, fails;
- fresh samples drawn from OS randomness with references computed here, in padded batches,
  so a runner that answers from the stored reference file on disk fails.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lab.batcher import collate, split
from lab.check import Checker, CheckResult
from lab.errors import ConfigError, RunnerError
from lab.export import load_reference
from lab.repository import ModelHandle
from lab.runners.base import Runner
from lab.workload import Workload

MIXED_BATCH_SIZE = 8
FRESH_SAMPLES = 16
REDUCED = ("fp16", "bf16", "half")  # option values that mean reduced-precision arithmetic

Sample = dict[str, np.ndarray]


def precision_hint(options: dict[str, Any], precision: str) -> str | None:
    """A hint when runner options ask for reduced precision but the tolerances are fp32's."""
    if precision not in ("fp32", "tf32"):
        return None
    reduced = [
        f"{key}={value}"
        for key, value in options.items()
        if (isinstance(value, str) and value.lower() in REDUCED)
        or (key.lower() in REDUCED and value is True)
    ]
    if not reduced:
        return None
    return (
        f"hint: {', '.join(reduced)} computes in reduced precision but the outputs were checked "
        f"against {precision} tolerances; add --precision fp16 to check against fp16 tolerances"
    )


def run_samples(
    runner: Runner, handle: ModelHandle, samples: list[Sample], batch_size: int = 1
) -> list[Sample]:
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
    outputs: list[Sample] = []
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


def mixed_order(samples: Sequence[Sample]) -> list[int]:
    """Indices that put long and short samples side by side: longest, shortest, second
    longest, second shortest, ... (by element count), so every batch is padded."""
    by_size = sorted(range(len(samples)), key=lambda i: sum(a.size for a in samples[i].values()))
    order: list[int] = []
    low, high = 0, len(by_size) - 1
    while low <= high:
        order.append(by_size[high])
        if low != high:
            order.append(by_size[low])
        low, high = low + 1, high - 1
    return order


@dataclass
class VerifyCheck:
    label: str
    batch_size: int
    result: CheckResult


@dataclass
class VerifyResult:
    """Every check of one verify run; truthy only when all of them passed."""

    checks: list[VerifyCheck]

    @property
    def passed(self) -> bool:
        return all(c.result.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> list[str]:
        return [f"{c.label}: {f}" for c in self.checks for f in c.result.failures]

    def summary(self) -> str:
        parts = []
        for check in self.checks:
            verdict = "PASS" if check.result.passed else "FAIL"
            parts.append(f"[{verdict}] {check.label}\n{check.result.summary()}")
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [
                {"label": c.label, "batch_size": c.batch_size, **c.result.to_dict()}
                for c in self.checks
            ],
        }


def verify_runner(
    handle: ModelHandle,
    runner: Runner,
    batch_sizes: Sequence[int] | None = None,
    fresh_samples: int = FRESH_SAMPLES,
) -> VerifyResult:
    """The default verification (see the module docstring). `batch_sizes` replaces the
    stored-set checks' sizes (1 and a mixed padded batch); `fresh_samples=0` skips the
    fresh check."""
    mixed = min(MIXED_BATCH_SIZE, handle.config.max_batch_size)
    sizes = list(batch_sizes) if batch_sizes else sorted({1, mixed})
    reference = load_reference(handle)
    checker = Checker.for_model(handle)
    order = mixed_order(reference.samples)
    checks = []
    for size in sizes:
        if size == 1:
            samples, expected = reference.samples, reference.outputs
            label = "reference set, batch 1"
        else:
            samples = [reference.samples[i] for i in order]
            expected = [reference.outputs[i] for i in order]
            label = f"reference set, padded batches of {size} (mixed lengths)"
        actual = run_samples(runner, handle, samples, size)
        checks.append(VerifyCheck(label, size, checker.check(actual, expected)))
    if fresh_samples > 0:
        workload = Workload(handle, seed=secrets.randbits(63))
        drawn = workload.samples(fresh_samples, "verify-fresh")
        expected = workload.reference(drawn, threads=1)
        size = max(sizes)
        picked = mixed_order(drawn)
        actual = run_samples(runner, handle, [drawn[i] for i in picked], size)
        checks.append(
            VerifyCheck(
                f"{fresh_samples} fresh samples (unpredictable seed), batches of {size}",
                size,
                checker.check(actual, [expected[i] for i in picked]),
            )
        )
    return VerifyResult(checks)
