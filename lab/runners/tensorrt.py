"""TensorRT runner: builds (or loads a cached) engine from the exported ONNX and runs it.

UNVERIFIED: written against TensorRT 10.x/11.x's Python API and never yet run on a GPU.
Device buffers and the stream come from torch's CUDA allocator, so no pycuda context is
created (pycuda.autoinit makes a non-primary context that fights torch's).

Options:
    device_id        GPU index (default 0)
    workspace_mb     builder workspace pool (default 4096)
    opt_batch        batch size the optimisation profile is tuned for (default 8)
    max_seq          max sequence length for dynamic non-batch axes (default: from the model's
                     size config `max_seq_len` if it has one, else 512)
    fp16             TensorRT 10 only: set BuilderFlag.FP16. TensorRT 11 networks are strongly
                     typed: export with `--precision fp16` instead (default False)
    cuda_graph       capture one CUDA graph per input shape and replay it (default False)
    engine_cache     where to cache the serialized plan (default: next to model.onnx)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lab.errors import BackendUnavailable, RunnerError
from lab.repository import ModelHandle
from lab.runners.base import Runner


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "the tensorrt runner needs TensorRT and a CUDA GPU: pip install 'servelab[gpu]'"
        ) from exc
    return trt


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(
        self,
        device_id: int = 0,
        workspace_mb: int = 4096,
        opt_batch: int = 8,
        max_seq: int = 0,
        fp16: bool = False,
        cuda_graph: bool = False,
        engine_cache: str = "",
    ) -> None:
        super().__init__(
            device_id=device_id,
            workspace_mb=workspace_mb,
            opt_batch=opt_batch,
            max_seq=max_seq,
            fp16=fp16,
            cuda_graph=cuda_graph,
            engine_cache=engine_cache,
        )
        self._trt: Any = None
        self._torch: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._device: Any = None
        self._graphs: dict[tuple[tuple[int, ...], ...], Any] = {}
        self._static: dict[tuple[tuple[int, ...], ...], dict[str, Any]] = {}

    # ----- build -----------------------------------------------------------------------
    def _profile_shapes(self, model: ModelHandle) -> dict[str, tuple[tuple[int, ...], ...]]:
        max_batch = model.config.max_batch_size
        opt_batch = min(int(self.options["opt_batch"]), max_batch)
        max_seq = int(self.options["max_seq"]) or int(
            getattr(model.size_config, "max_seq_len", 512)
        )
        shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        for spec in model.inputs:
            lo, opt, hi = [1], [opt_batch], [max_batch]
            for dim in spec.shape[1:]:
                if dim == -1:
                    lo.append(1)
                    opt.append(min(128, max_seq))
                    hi.append(max_seq)
                else:
                    lo.append(dim)
                    opt.append(dim)
                    hi.append(dim)
            shapes[spec.name] = (tuple(lo), tuple(opt), tuple(hi))
        return shapes

    def _engine_path(self, model: ModelHandle, onnx_path: Path) -> Path:
        trt = self._trt
        key = hashlib.sha256()
        key.update(onnx_path.read_bytes())
        key.update(repr(sorted(self.options.items())).encode())
        key.update(trt.__version__.encode())
        key.update(self._torch.cuda.get_device_name(self._device).encode())
        folder = (
            Path(str(self.options["engine_cache"]))
            if self.options["engine_cache"]
            else onnx_path.parent
        )
        return folder / f"model-{key.hexdigest()[:16]}.plan"

    def _build(self, model: ModelHandle, onnx_path: Path) -> bytes:
        trt = self._trt
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly_typed is not None and not self.options["fp16"]:
            flags |= 1 << int(strongly_typed)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RunnerError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(
            trt.MemoryPoolType.WORKSPACE, int(self.options["workspace_mb"]) << 20
        )
        if self.options["fp16"]:
            flag = getattr(trt.BuilderFlag, "FP16", None)
            if flag is None:
                raise BackendUnavailable(
                    "this TensorRT has no FP16 builder flag (TensorRT 11 is strongly typed): "
                    "export with --precision fp16 and drop the fp16 option"
                )
            config.set_flag(flag)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in self._profile_shapes(model).items():
            profile.set_shape(name, min=lo, opt=opt, max=hi)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RunnerError(f"TensorRT failed to build an engine from {onnx_path}")
        return bytes(plan)

    def load_impl(self, model: ModelHandle) -> None:
        trt = _import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("the tensorrt runner needs a CUDA GPU; torch sees none")
        self._trt, self._torch = trt, torch
        self._device = torch.device(f"cuda:{int(self.options['device_id'])}")
        torch.cuda.set_device(self._device)
        onnx_path = model.require_exported()
        plan_path = self._engine_path(model, onnx_path)
        if plan_path.is_file():
            plan = plan_path.read_bytes()
        else:
            plan = self._build(model, onnx_path)
            tmp = plan_path.with_suffix(".tmp")
            tmp.write_bytes(plan)
            tmp.replace(plan_path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise RunnerError(f"TensorRT could not deserialize {plan_path}; delete it to rebuild")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self._device)

    # ----- run -------------------------------------------------------------------------
    def _torch_dtype(self, name: str) -> Any:
        np_dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
        return self._torch.from_numpy(np.zeros(0, np_dtype)).dtype

    def _bind(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        torch, ctx = self._torch, self._context
        buffers: dict[str, Any] = {}
        for spec in self._inputs:
            host = torch.from_numpy(np.ascontiguousarray(inputs[spec.name]))
            dev = host.to(self._device, dtype=self._torch_dtype(spec.name), non_blocking=True)
            ctx.set_input_shape(spec.name, tuple(dev.shape))
            ctx.set_tensor_address(spec.name, dev.data_ptr())
            buffers[spec.name] = dev
        for spec in self._outputs:
            shape = tuple(ctx.get_tensor_shape(spec.name))
            out = torch.empty(shape, dtype=self._torch_dtype(spec.name), device=self._device)
            ctx.set_tensor_address(spec.name, out.data_ptr())
            buffers[spec.name] = out
        return buffers

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            if self.options["cuda_graph"]:
                buffers = self._run_graph(inputs)
            else:
                buffers = self._bind(inputs)
                if not self._context.execute_async_v3(self._stream.cuda_stream):
                    raise RunnerError("TensorRT execute_async_v3 returned False")
            self._stream.synchronize()
        return {s.name: buffers[s.name].float().cpu().numpy() for s in self._outputs}

    def _run_graph(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """One CUDA graph per input-shape signature: copy into static buffers, replay."""
        torch = self._torch
        key = tuple(inputs[s.name].shape for s in self._inputs)
        if key not in self._graphs:
            static = self._bind(inputs)
            self._context.execute_async_v3(self._stream.cuda_stream)  # warm-up outside capture
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                if not self._context.execute_async_v3(self._stream.cuda_stream):
                    raise RunnerError(
                        "this engine cannot be captured in a CUDA graph; drop cuda_graph"
                    )
            self._graphs[key], self._static[key] = graph, static
        static = self._static[key]
        for spec in self._inputs:
            src = torch.from_numpy(np.ascontiguousarray(inputs[spec.name]))
            static[spec.name].copy_(src, non_blocking=True)
        self._graphs[key].replay()
        return static

    def close_impl(self) -> None:
        self._graphs.clear()
        self._static.clear()
        self._context = None
        self._engine = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._trt is not None:
            info["tensorrt_version"] = self._trt.__version__
            info["verified_on_gpu"] = False
        return info
