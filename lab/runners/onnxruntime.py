"""ONNX Runtime runner: CPU by default; CUDA or TensorRT providers when that build is installed.

Options: provider ("cpu" | "cuda" | "tensorrt" | "auto"), intra_op_threads, inter_op_threads,
graph_optimization ("disable" | "basic" | "extended" | "all"), device_id, math ("" = from the
precision), cuda_graph, opt_batch and max_seq (the TensorRT provider's profile), engine_cache.

GPU providers (UNVERIFIED: no GPU has run them yet):
- No silent CPU fallback: ONNX Runtime drops a provider that fails to initialise and carries
  on with the next one (a warning at most). After creating the session the providers that
  actually run (`session.get_providers()`) are compared with those asked for; a missing first
  provider is a one-line BackendUnavailable. `describe()` records the providers that ran.
- Math mode (lab/runners/precision.py): the CUDA provider gets `use_tf32=0` unless the
  precision is tf32 (its default is 1); the TensorRT provider follows TensorRT, which enables
  TF32 by default, so fp32 sets NVIDIA_TF32_OVERRIDE=0 in this (worker) process;
  `trt_fp16_enable` for fp16.
- TensorRT provider: optimisation profiles from the same derivation as the TensorRT runner
  (without them every new padded shape rebuilds the engine inside the measured run), engine
  and timing caches under `<model version folder>/ort-trt/`.
- cuda_graph: the provider captures one graph for one fixed input shape, through IOBinding.
  Every batch is padded up to (max_batch_size, max_seq) — for fixed-shape measurements only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lab.errors import BackendUnavailable, ConfigError, RunnerError
from lab.repository import ModelHandle
from lab.runners.base import Runner
from lab.runners.precision import allows_tf32, math_mode, ort_cuda_options
from lab.runners.shapes import derive_profiles, ort_trt_profile_options

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_PROVIDERS = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TRT, CUDA, CPU]}
_LEVELS = ("disable", "basic", "extended", "all")


def choose_provider(provider: str, available: Sequence[str]) -> list[str]:
    """The provider names to ask for, best first; BackendUnavailable when the first is not in
    this build."""
    if provider == "auto":
        provider = next(
            (c for c in ("tensorrt", "cuda", "cpu") if _PROVIDERS[c][0] in available), "cpu"
        )
    if provider not in _PROVIDERS:
        raise ConfigError(
            f"unknown onnxruntime provider {provider!r}: choose cpu, cuda, tensorrt or auto"
        )
    wanted = _PROVIDERS[provider]
    if wanted[0] not in available:
        raise BackendUnavailable(
            f"onnxruntime provider {wanted[0]} is not in this build (available: "
            f"{', '.join(available)}); install onnxruntime-gpu (and not onnxruntime beside it)"
        )
    return [p for p in wanted if p in available]


def check_providers(asked: Sequence[str], running: Sequence[str]) -> None:
    """One line when the provider asked for first is not among those the session runs."""
    if asked and asked[0] not in running:
        raise BackendUnavailable(
            f"onnxruntime fell back from {asked[0]} to {', '.join(running) or 'nothing'}: the "
            "provider failed to initialise (CUDA/cuDNN/TensorRT libraries not found or not "
            "matching this onnxruntime-gpu build?)"
        )


def provider_options(
    names: Sequence[str], mode: str, device_id: int, trt: Mapping[str, str] | None = None,
    cuda_graph: bool = False,
) -> list[Any]:  # fmt: skip
    """(name, options) pairs for InferenceSession(providers=...); the CPU provider bare."""
    result: list[Any] = []
    for name in names:
        if name == CUDA:
            options = ort_cuda_options(mode, device_id)
            if cuda_graph and names[0] == CUDA:
                options["enable_cuda_graph"] = "1"
            result.append((name, options))
        elif name == TRT:
            options = {"device_id": str(device_id), **(trt or {})}
            options["trt_fp16_enable"] = "1" if mode == "fp16" else "0"
            if cuda_graph:
                options["trt_cuda_graph_enable"] = "1"
            result.append((name, options))
        else:
            result.append(name)
    return result


def tensorrt_provider_options(model: ModelHandle, opt_batch: int, max_seq: int,
                              cache_dir: Path) -> dict[str, str]:  # fmt: skip
    """Profiles plus engine and timing caches for the TensorRT provider."""
    profiles = derive_profiles(model.inputs, model.config.max_batch_size, opt_batch, max_seq)
    return {
        **ort_trt_profile_options(profiles),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache_dir),
    }


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(
        self,
        provider: str = "cpu",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        graph_optimization: str = "all",
        device_id: int = 0,
        math: str = "",
        cuda_graph: bool = False,
        opt_batch: int = 8,
        max_seq: int = 0,
        engine_cache: str = "",
    ) -> None:
        super().__init__(
            provider=provider,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            graph_optimization=graph_optimization,
            device_id=device_id,
            math=math,
            cuda_graph=cuda_graph,
            opt_batch=opt_batch,
            max_seq=max_seq,
            engine_cache=engine_cache,
        )
        self.session: Any = None
        self._output_names: list[str] = []
        self._math = ""
        self._asked: list[str] = []
        self._binding: Any = None
        self._graph_inputs: dict[str, Any] = {}
        self._graph_shapes: dict[str, tuple[int, ...]] = {}

    def _providers(self, ort: Any) -> list[str]:
        return choose_provider(str(self.options["provider"]), ort.get_available_providers())

    def load_impl(self, model: ModelHandle) -> None:
        import onnxruntime as ort

        path = model.require_exported()
        level = str(self.options["graph_optimization"])
        if level not in _LEVELS:
            raise ConfigError(
                f"unknown graph_optimization {level!r}: choose from {', '.join(_LEVELS)}"
            )
        names = self._providers(ort)
        gpu = names[0] != CPU
        # On the CPU provider the math is the graph's own: fp16 for an fp16 export, else fp32.
        self._math = math_mode(model.precision, str(self.options["math"])) if gpu else (
            "fp16" if model.precision == "fp16" else "fp32"
        )  # fmt: skip
        ort.set_default_logger_severity(2 if gpu else 3)  # a GPU fallback warning stays visible
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        so.intra_op_num_threads = int(self.options["intra_op_threads"])
        so.inter_op_num_threads = int(self.options["inter_op_threads"])
        so.log_severity_level = 2 if gpu else 3
        max_seq = int(self.options["max_seq"]) or int(
            getattr(model.size_config, "max_seq_len", 512)
        )
        trt_options = None
        if names[0] == TRT:
            cache = (
                Path(str(self.options["engine_cache"]))
                if self.options["engine_cache"]
                else model.version_dir / "ort-trt"
            )
            cache.mkdir(parents=True, exist_ok=True)
            trt_options = tensorrt_provider_options(
                model, int(self.options["opt_batch"]), max_seq, cache
            )
            if not allows_tf32(self._math):  # the TensorRT provider has no TF32 switch
                os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
        cuda_graph = bool(self.options["cuda_graph"])
        if cuda_graph and not gpu:
            raise ConfigError("cuda_graph needs provider=cuda or provider=tensorrt")
        providers = provider_options(
            names, self._math, int(self.options["device_id"]), trt_options, cuda_graph
        )
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NoSuchFile derive from Exception
            raise RunnerError(f"onnxruntime could not load {path}: {exc}") from exc
        self._asked = names
        check_providers(names, self.session.get_providers())
        self._output_names = [o.name for o in model.outputs]
        if cuda_graph:
            self._bind_graph(ort, model, max_seq)

    def _bind_graph(self, ort: Any, model: ModelHandle, max_seq: int) -> None:
        """Fixed-shape device inputs and outputs bound once (CUDA graphs need fixed addresses)."""
        device_id = int(self.options["device_id"])
        self._binding = self.session.io_binding()
        for spec in model.inputs:
            shape = tuple(
                model.config.max_batch_size if i == 0 else (max_seq if d == -1 else d)
                for i, d in enumerate(spec.shape)
            )
            value = ort.OrtValue.ortvalue_from_numpy(
                np.full(shape, spec.pad_value, dtype=spec.dtype), "cuda", device_id
            )
            self._graph_inputs[spec.name] = value
            self._graph_shapes[spec.name] = shape
            self._binding.bind_ortvalue_input(spec.name, value)
        for name in self._output_names:
            self._binding.bind_output(name, "cuda", device_id)

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if self._binding is not None:
            return self._infer_graph(inputs)
        values = self.session.run(self._output_names, inputs)
        return dict(zip(self._output_names, values))

    def _infer_graph(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        batch = next(iter(inputs.values())).shape[0]
        for name, value in self._graph_inputs.items():
            array = inputs[name]
            padded = np.full(self._graph_shapes[name], 0, dtype=array.dtype)
            spec = next(s for s in self._inputs if s.name == name)
            padded[...] = spec.pad_value
            padded[tuple(slice(0, d) for d in array.shape)] = array
            value.update_inplace(padded)
        self.session.run_with_iobinding(self._binding)
        outputs = self._binding.copy_outputs_to_cpu()
        return {name: out[:batch] for name, out in zip(self._output_names, outputs)}

    def close_impl(self) -> None:
        self._binding = None
        self._graph_inputs.clear()
        self.session = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.session is not None:
            info["providers_asked"] = list(self._asked)
            info["providers"] = self.session.get_providers()
            info["math_mode"] = self._math
            if self._asked and self._asked[0] != CPU:
                info["verified_on_gpu"] = False
        return info
