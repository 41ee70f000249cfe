"""What the harness drives: a target takes requests and answers them asynchronously.

The harness knows nothing about models. It hands a target one request at a time (a dict of
arrays, batch dimension first) with the time the request was *scheduled*, and measures
latency from that time. Implementations: `InProcessTarget` (a runner behind the dynamic
batcher) and, for a server across a process boundary, `lab.bench.remote_target.RemoteTarget`.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from lab.batcher import Completion, Tensors


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
