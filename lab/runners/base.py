"""The runner contract: the one seam everything the harness measures goes through.

A runner turns a dict of numpy arrays (batch dimension first) into a dict of numpy
arrays. The base class owns the state checks, input/output validation and timing;
a backend implements three small hooks:

    load_impl(model)      open the model (heavy imports and I/O happen here)
    infer_impl(inputs)    run one batch; return every output named in model.outputs
    close_impl()          release resources (optional)

Constructors only store options. A plugin is any subclass, loaded with
`--runner path/to/file.py:ClassName` or `--runner package.module:ClassName`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from lab.errors import InputError, LabError, RunnerError
from lab.repository import ModelHandle, TensorSpec, check_same_shapes


class Runner:
    """Base class for every backend. Subclasses set `name` and implement the hooks."""

    name: ClassVar[str] = "runner"
    # True for runners that wait on something outside this process (a remote server, a
    # worker process) and so may stall for a whole timeout: the server never runs those on
    # its event loop (lab.serve.core, ModelState.may_run_inline).
    may_stall: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = dict(options)
        self.model: ModelHandle | None = None
        self.last_infer_ms: float = 0.0
        self._inputs: tuple[TensorSpec, ...] = ()
        self._outputs: tuple[TensorSpec, ...] = ()
        self._input_dtypes: dict[str, np.dtype] = {}
        self._max_batch = 0
        self._base_initialised = True

    # ----- hooks a backend implements ---------------------------------------------------
    def load_impl(self, model: ModelHandle) -> None:
        raise NotImplementedError

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        raise NotImplementedError

    def close_impl(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        """What the report records about this runner (override to add backend details)."""
        return {"name": self.name, "class": type(self).__qualname__, "options": self.options}

    # ----- public API (do not override) ------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        return self.model is not None

    def load(self, model: ModelHandle) -> Runner:
        if self.is_loaded:
            raise RunnerError(f"runner {self.name} is already loaded; close() it first")
        self._inputs = tuple(model.inputs)
        self._outputs = tuple(model.outputs)
        self._input_dtypes = {s.name: np.dtype(s.dtype) for s in self._inputs}
        self._max_batch = model.config.max_batch_size
        try:
            self.load_impl(model)
        except LabError:
            raise
        except Exception as exc:  # a plugin's bug is the user's to fix: say so in one line
            raise RunnerError(
                f"runner {self.name} failed to load {model.name}: {type(exc).__name__}: {exc}"
            ) from exc
        self.model = model
        return self

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Inputs are validated against the model's specs first."""
        if self.model is None:
            raise RunnerError(f"runner {self.name} is not loaded: call load(model) first")
        batch = self._validate_inputs(inputs)
        start = time.perf_counter_ns()
        try:
            outputs = self.infer_impl(dict(inputs))
        except LabError:
            raise
        except Exception as exc:
            raise RunnerError(f"runner {self.name} failed: {type(exc).__name__}: {exc}") from exc
        self.last_infer_ms = (time.perf_counter_ns() - start) / 1e6
        return self._validate_outputs(outputs, batch)

    def close(self) -> None:
        if self.model is not None:
            self.close_impl()
            self.model = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- validation ------------------------------------------------------------------
    def _validate_inputs(self, inputs: Mapping[str, np.ndarray]) -> int:
        if len(inputs) != len(self._inputs) or any(s.name not in inputs for s in self._inputs):
            expected = sorted(s.name for s in self._inputs)
            raise InputError(f"expected inputs {expected}, got {sorted(inputs)}")
        batch = -1
        for spec in self._inputs:
            array = inputs[spec.name]
            if not isinstance(array, np.ndarray):
                raise InputError(
                    f"input {spec.name!r} must be a numpy array, got {type(array).__name__}"
                )
            if array.dtype != self._input_dtypes[spec.name]:
                raise InputError(
                    f"input {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}"
                )
            shape = array.shape
            spec.check_shape(shape)
            if batch == -1:
                batch = shape[0]
            elif shape[0] != batch:
                raise InputError(
                    f"input {spec.name!r} has batch size {shape[0]}, others have {batch}"
                )
        check_same_shapes(self._inputs, {name: a.shape for name, a in inputs.items()})
        for spec in self._inputs:  # ids within the vocabulary / tables, finite floats
            spec.check_values(inputs[spec.name])
        if batch < 1:
            raise InputError("batch size must be at least 1")
        if self._max_batch and batch > self._max_batch:
            raise InputError(
                f"batch size {batch} exceeds the model's max_batch_size {self._max_batch}"
            )
        return batch

    def _validate_outputs(
        self, outputs: Mapping[str, np.ndarray], batch: int
    ) -> dict[str, np.ndarray]:
        if not isinstance(outputs, Mapping):
            raise RunnerError(
                f"runner {self.name} returned {type(outputs).__name__}; infer_impl must return a dict"
            )
        result: dict[str, np.ndarray] = {}
        for spec in self._outputs:
            if spec.name not in outputs:
                raise RunnerError(f"runner {self.name} did not return output {spec.name!r}")
            array = outputs[spec.name]
            if not isinstance(array, np.ndarray):
                array = np.asarray(array)
            if array.ndim == 0 or array.shape[0] != batch:
                raise RunnerError(
                    f"runner {self.name} returned {spec.name!r} with shape {list(array.shape)} "
                    f"for a batch of {batch}"
                )
            result[spec.name] = array
        return result
