"""Process isolation for runners under test.

The harness (clocks, workload, references, audit selection, checker, secret seed) stays in
the parent process; a runner under test is imported and called only in a worker process
that gets plain data: a picklable model reference, the runner's spec and options, and
tensors in shared memory. `make_runner` is the one place that decides which it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab.errors import ConfigError
from lab.runners import RUNNERS, create_runner
from lab.runners.base import Runner

ISOLATION_MODES = ("process", "none")
LOAD_TIMEOUT_S = 300.0  # TensorRT engine builds take minutes
WORKER_TIMEOUT_S = 60.0


def make_runner(
    spec: str,
    options: Mapping[str, Any] | None = None,
    isolation: str = "process",
    load_timeout_s: float = LOAD_TIMEOUT_S,
    infer_timeout_s: float = WORKER_TIMEOUT_S,
) -> Runner:
    """A runner for `spec`: in a worker process (the default), or in this one with
    isolation "none" (built-in runners and debugging; reports say so)."""
    if isolation == "none":
        return create_runner(spec, dict(options or {}))
    if isolation != "process":
        raise ConfigError(
            f"unknown isolation {isolation!r}: choose from {', '.join(ISOLATION_MODES)}"
        )
    if spec not in RUNNERS and ":" not in spec:
        create_runner(spec)  # raises the usual one-line "unknown runner" error
    from lab.isolation.runner import IsolatedRunner

    return IsolatedRunner(
        spec, options, load_timeout_s=load_timeout_s, infer_timeout_s=infer_timeout_s
    )


def isolation_of(runner: Runner) -> str:
    from lab.isolation.runner import IsolatedRunner

    return "process" if isinstance(runner, IsolatedRunner) else "none"


def worker_usage(runner: Runner) -> dict[str, Any] | None:
    """The isolated worker's accounting (see IsolatedRunner.usage), None in-process."""
    from lab.isolation.runner import IsolatedRunner

    return runner.usage() if isinstance(runner, IsolatedRunner) else None


def worker_lost(runner: Runner) -> str | None:
    """Why the runner's worker is gone, or None (always None in-process)."""
    from lab.isolation.runner import IsolatedRunner

    return runner.lost if isinstance(runner, IsolatedRunner) else None


def spec_of(runner: Runner) -> tuple[str, dict[str, Any]]:
    """(runner name, options) of what actually runs, seen through an isolated worker."""
    from lab.isolation.runner import IsolatedRunner

    if isinstance(runner, IsolatedRunner):
        return runner.spec, dict(runner.options)
    return runner.name, dict(runner.options)
