"""What the harness drives: a target takes requests and answers them asynchronously.

The harness knows nothing about models. It hands a target one request at a time (a dict of
arrays, batch dimension first) with the time the request was *scheduled*, and measures
latency from that time. Implementations: `InProcessTarget` (a runner behind the dynamic
batcher) and, for a server across a process boundary, `lab.bench.remote_target.RemoteTarget`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from lab.batcher import Completion, DynamicBatcher, Tensors
from lab.errors import ConfigError, ServeError
from lab.runners.base import Runner


class Target:
    """Base class. `submit` must return quickly; the future resolves to a Completion
    (outputs plus queue/compute split in ns; zeros where the target cannot tell)."""

    name = "target"

    def start(self) -> None:
        return None

    def submit(self, inputs: Tensors, scheduled_ns: int) -> Future[Completion]:
        raise NotImplementedError

    def stop(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def __enter__(self) -> Target:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class InProcessTarget(Target):
    """A loaded runner behind a `DynamicBatcher`, in this process.

    The runner must already be loaded; `stop()` stops the batcher but leaves closing the
    runner to its owner. Inputs are handed to the runner as given: the harness passes copies.
    """

    name = "inprocess"

    def __init__(
        self,
        runner: Runner,
        max_batch_size: int | None = None,
        max_queue_delay_us: int | None = None,
        preferred_batch_sizes: Sequence[int] | None = None,
        max_queue_size: int = 0,
    ) -> None:
        if runner.model is None:
            raise ConfigError("the in-process target needs a loaded runner")
        config = runner.model.config
        self.runner = runner
        self.max_batch_size = int(max_batch_size or config.max_batch_size)
        if config.max_batch_size and self.max_batch_size > config.max_batch_size:
            raise ConfigError(
                f"max batch size {self.max_batch_size} exceeds the model's "
                f"max_batch_size {config.max_batch_size}"
            )
        self.max_queue_delay_us = int(
            config.max_queue_delay_us if max_queue_delay_us is None else max_queue_delay_us
        )
        preferred = (
            config.preferred_batch_sizes if preferred_batch_sizes is None else preferred_batch_sizes
        )
        self.preferred_batch_sizes = tuple(p for p in preferred if p <= self.max_batch_size)
        self.max_queue_size = max_queue_size
        self.batcher: DynamicBatcher | None = None

    def start(self) -> None:
        if self.batcher is not None:
            return
        model = self.runner.model
        assert model is not None
        self.batcher = DynamicBatcher(
            self.runner.infer,
            model.inputs,
            max_batch_size=self.max_batch_size,
            max_queue_delay_us=self.max_queue_delay_us,
            preferred_batch_sizes=self.preferred_batch_sizes,
            max_queue_size=self.max_queue_size,
        ).start()

    def submit(self, inputs: Tensors, scheduled_ns: int) -> Future[Completion]:
        if self.batcher is None:
            raise ServeError("the in-process target is not started")
        return self.batcher.submit(inputs)

    def stop(self, drain: bool = True) -> None:
        """Stop the batcher; with `drain` (the default) finish everything queued first."""
        if self.batcher is not None:
            self.batcher.stop(drain=drain)
            self.batcher = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runner": self.runner.describe(),
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_us": self.max_queue_delay_us,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "max_queue_size": self.max_queue_size,
        }
