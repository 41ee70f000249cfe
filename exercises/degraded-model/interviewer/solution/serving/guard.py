"""The serving guard: the runner `servelab serve` calls, wrapping the model build in use,
and checking it against a float32 shadow so that a silently degraded build falls back.

    servelab serve --config serving/serve.toml

Detection: the shadow (ONNX Runtime on the exported float32 model) answers the same batch;
the guard compares every output. The first `warm_batches` batches are all checked, then one
in `shadow_every`. A batch whose largest absolute difference is over `max_abs_error` makes
the guard raise: the server answers that request with its fallback runner and counts a
primary failure; after `breaker-failures` of them the circuit breaker opens and everything
goes to the fallback. Once tripped the guard checks every batch it is given (the breaker's
probes), so it recovers only when the build agrees again.

Options: `inner` (the wrapped runner), `inner_<option>` (its options), `max_abs_error`
(default 0.01: int8 rounding moves a click probability by ~1e-3), `warm_batches` (8),
`shadow_every` (16), `shadow_threads` (1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.repository import ModelHandle
from lab.runners import create_runner
from lab.runners.base import Runner

PREFIX = "inner_"


class DegradedOutputs(RuntimeError):
    """The wrapped build disagrees with the float32 shadow."""


class GuardedRunner(Runner):
    name = "guarded"

    def __init__(
        self,
        inner: str = "serving.quantised:QuantisedRankerRunner",
        max_abs_error: float = 0.01,
        warm_batches: int = 8,
        shadow_every: int = 16,
        shadow_threads: int = 1,
        **options: Any,
    ):
        super().__init__(
            inner=inner,
            max_abs_error=max_abs_error,
            warm_batches=warm_batches,
            shadow_every=shadow_every,
            shadow_threads=shadow_threads,
            **options,
        )
        self._inner: Runner | None = None
        self._shadow: Runner | None = None
        self._batches = 0
        self._tripped = False

    def load_impl(self, model: ModelHandle) -> None:
        inner_options = {
            k[len(PREFIX) :]: v for k, v in self.options.items() if k.startswith(PREFIX)
        }
        self._inner = create_runner(str(self.options["inner"]), inner_options)
        self._inner.load(model)
        threads = int(self.options["shadow_threads"])
        self._shadow = create_runner("onnxruntime", {"intra_op_threads": threads})
        self._shadow.load(model)

    def _due(self) -> bool:
        self._batches += 1
        warm = int(self.options["warm_batches"])
        every = max(1, int(self.options["shadow_every"]))
        return self._tripped or self._batches <= warm or self._batches % every == 0

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        assert self._inner is not None and self._shadow is not None
        outputs = self._inner.infer(inputs)
        if not self._due():
            return outputs
        expected = self._shadow.infer(inputs)
        worst = max(
            float(np.max(np.abs(outputs[name] - expected[name]), initial=0.0)) for name in expected
        )
        limit = float(self.options["max_abs_error"])
        if not np.isfinite(worst) or worst > limit:
            self._tripped = True
            raise DegradedOutputs(
                f"outputs disagree with the float32 shadow: max |diff| {worst:.3g} > {limit:g}"
            )
        self._tripped = False
        return outputs

    def close_impl(self) -> None:
        for runner in (self._inner, self._shadow):
            if runner is not None:
                runner.close()
        self._inner = self._shadow = None
