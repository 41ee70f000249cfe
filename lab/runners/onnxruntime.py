"""ONNX Runtime runner: CPU by default; CUDA or TensorRT providers when that build is installed.

Options: provider ("cpu" | "cuda" | "tensorrt" | "auto"), intra_op_threads, inter_op_threads,
graph_optimization ("disable" | "basic" | "extended" | "all"), device_id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.errors import BackendUnavailable, ConfigError, RunnerError
from lab.repository import ModelHandle
from lab.runners.base import Runner

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_LEVELS = ("disable", "basic", "extended", "all")


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(
        self,
        provider: str = "cpu",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        graph_optimization: str = "all",
        device_id: int = 0,
    ) -> None:
        super().__init__(
            provider=provider,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            graph_optimization=graph_optimization,
            device_id=device_id,
        )
        self.session: Any = None
        self._output_names: list[str] = []

    def _providers(self, ort: Any) -> list[Any]:
        provider = str(self.options["provider"])
        available = ort.get_available_providers()
        if provider == "auto":
            for choice in ("tensorrt", "cuda", "cpu"):
                if _PROVIDERS[choice][0] in available:
                    provider = choice
                    break
        if provider not in _PROVIDERS:
            raise ConfigError(
                f"unknown onnxruntime provider {provider!r}: choose cpu, cuda, tensorrt or auto"
            )
        wanted = _PROVIDERS[provider]
        if wanted[0] not in available:
            raise BackendUnavailable(
                f"onnxruntime provider {wanted[0]} is not in this build (available: {', '.join(available)}); "
                "install onnxruntime-gpu for CUDA/TensorRT"
            )
        device = {"device_id": int(self.options["device_id"])}
        return [(p, device) if p != "CPUExecutionProvider" else p for p in wanted if p in available]

    def load_impl(self, model: ModelHandle) -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # rejected inputs are reported by us, once
        path = model.require_exported()
        level = str(self.options["graph_optimization"])
        if level not in _LEVELS:
            raise ConfigError(
                f"unknown graph_optimization {level!r}: choose from {', '.join(_LEVELS)}"
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        so.intra_op_num_threads = int(self.options["intra_op_threads"])
        so.inter_op_num_threads = int(self.options["inter_op_threads"])
        so.log_severity_level = 3
        providers = self._providers(ort)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NoSuchFile derive from Exception
            raise RunnerError(f"onnxruntime could not load {path}: {exc}") from exc
        self._output_names = [o.name for o in model.outputs]

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        values = self.session.run(self._output_names, inputs)
        return dict(zip(self._output_names, values))

    def close_impl(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.session is not None:
            info["providers"] = self.session.get_providers()
        return info
