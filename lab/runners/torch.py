"""PyTorch eager runner (the reference backend).

Options: device ("cpu" | "cuda" | "cuda:N"), dtype ("fp32" | "fp16" | "bf16"), threads.
Inputs keep their integer dtypes; floating inputs and the model are cast to `dtype`;
outputs come back as float32 numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.errors import BackendUnavailable, ConfigError
from lab.repository import ModelHandle
from lab.runners.base import Runner

_DTYPES = ("fp32", "fp16", "bf16")


class TorchRunner(Runner):
    name = "torch"

    def __init__(
        self, device: str = "cpu", dtype: str = "fp32", threads: int = 0, **options: Any
    ) -> None:
        super().__init__(device=device, dtype=dtype, threads=threads)
        self._module: Any = None
        self._torch: Any = None
        self._dtype: Any = None
        self._device: Any = None
        self._names: list[str] = []
        self._output_names: list[str] = []

    def load_impl(self, model: ModelHandle) -> None:
        import torch

        from lab.weights import load_module

        dtype = str(self.options["dtype"])
        if dtype not in _DTYPES:
            raise ConfigError(f"unknown torch dtype {dtype!r}: choose from {', '.join(_DTYPES)}")
        device = str(self.options["device"])
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(
                "torch runner: device=cuda asked for, but torch sees no CUDA GPU"
            )
        if int(self.options["threads"]) > 0:
            torch.set_num_threads(int(self.options["threads"]))
        self._torch = torch
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self._device = torch.device(device)
        self._module = load_module(model).to(device=self._device, dtype=self._dtype)
        self._names = [s.name for s in model.inputs]
        self._output_names = [s.name for s in model.outputs]

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        torch = self._torch
        tensors = []
        for name in self._names:
            t = torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self._device)
            if t.is_floating_point():
                t = t.to(self._dtype)
            tensors.append(t)
        with torch.inference_mode():
            result = self._module(*tensors)
        if isinstance(result, torch.Tensor):
            result = (result,)
        return {
            name: value.detach().float().cpu().numpy()
            for name, value in zip(self._output_names, result)
        }

    def close_impl(self) -> None:
        self._module = None
