"""The serving guard: the runner `servelab serve` calls, wrapping the model build in use.

    servelab serve --config serving/serve.toml

Options: `inner` (the runner it wraps, a runner name or module:Class; default the int8
ranker), and `inner_<option>` for each of the inner runner's options.

Today it only forwards: whatever the inner runner answers is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.repository import ModelHandle
from lab.runners import create_runner
from lab.runners.base import Runner

PREFIX = "inner_"


class GuardedRunner(Runner):
    name = "guarded"

    def __init__(self, inner: str = "serving.quantised:QuantisedRankerRunner", **options: Any):
        super().__init__(inner=inner, **options)
        self._inner: Runner | None = None

    def load_impl(self, model: ModelHandle) -> None:
        inner_options = {
            k[len(PREFIX) :]: v for k, v in self.options.items() if k.startswith(PREFIX)
        }
        self._inner = create_runner(str(self.options["inner"]), inner_options)
        self._inner.load(model)

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        assert self._inner is not None
        return self._inner.infer(inputs)

    def close_impl(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None
