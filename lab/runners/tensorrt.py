"""TensorRT runner: builds (or loads a cached) engine from the exported ONNX and runs it.

UNVERIFIED: written against TensorRT 10.x/11.x's Python API and never yet run on a GPU
(benchmarks/gpu_check.py runs it when a GPU is at hand).

- Parses from the file path (`OnnxParser.parse_from_file`), so external weights
  (`model.onnx.data`, ranker `large`) load.
- Math mode from the exported precision (lab/runners/precision.py): fp32 clears
  `BuilderFlag.TF32` (TensorRT enables it by default), tf32 sets it, fp16 builds the fp16
  graph strongly typed.
- Engines are cached under `<model version folder>/engines/` keyed by the ONNX and weights
  hashes, TensorRT version, GPU name and compute capability, math mode and profiles, with a
  manifest beside each plan, built under a file lock and written atomically; the timing cache
  persists (lab/runners/engine_cache.py).
- Buffers, streams and events come from pycuda on the primary context, or from PyTorch's
  allocator when pycuda is not installed (lab/runners/cuda_buffers.py). Buffers are
  allocated once at the profile's maximum shapes, so tensor addresses never change.
- Every `set_input_shape` and enqueue is checked; an error names the shape and the profile's
  range.
- CUDA graphs (option cuda_graph): shapes padded up to power-of-two buckets, one graph per
  bucket in a capped LRU, captured on first use in thread-local mode; when capture fails the
  runner logs why and runs plain enqueues.

Options:
    device_id        GPU index (default 0)
    workspace_mb     builder workspace pool (default 4096)
    opt_batch        batch size the optimisation profile is tuned for (default 8)
    max_seq          max length of dynamic non-batch axes (default: the size config's
                     `max_seq_len` if it has one, else 512)
    math             "" (from the precision: fp32|tf32|fp16) or fp32, tf32, fp16 (fp16 on an
                     fp32 graph needs TensorRT 10's weakly typed BuilderFlag.FP16)
    cuda_graph       capture bucketed CUDA graphs and replay them (default False)
    graph_cache      at most this many captured graphs (default 8)
    engine_cache     folder for plans (default: <model version folder>/engines)
    buffers          auto (pycuda, else torch), pycuda or torch
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lab.errors import BackendUnavailable, RunnerError
from lab.repository import ModelHandle
from lab.runners.base import Runner
from lab.runners.cuda_buffers import Buffers, DeviceArray, Graph, open_buffers
from lab.runners.engine_cache import EngineCache, make_key
from lab.runners.precision import allows_tf32, math_mode
from lab.runners.shapes import (
    GraphCache,
    Profile,
    bucket_shape,
    buckets_up_to,
    check_in_profile,
    derive_profiles,
)

log = logging.getLogger(__name__)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "the tensorrt runner needs TensorRT (the tensorrt package) and a CUDA GPU: "
            "pip install 'servelab[gpu]' (see README, Running on an NVIDIA GPU)"
        ) from exc
    return trt


def _max_seq(model: ModelHandle, option: int) -> int:
    return option or int(getattr(model.size_config, "max_seq_len", 512))


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(
        self,
        device_id: int = 0,
        workspace_mb: int = 4096,
        opt_batch: int = 8,
        max_seq: int = 0,
        math: str = "",
        cuda_graph: bool = False,
        graph_cache: int = 8,
        engine_cache: str = "",
        buffers: str = "auto",
    ) -> None:
        super().__init__(
            device_id=device_id,
            workspace_mb=workspace_mb,
            opt_batch=opt_batch,
            max_seq=max_seq,
            math=math,
            cuda_graph=cuda_graph,
            graph_cache=graph_cache,
            engine_cache=engine_cache,
            buffers=buffers,
        )
        self._trt: Any = None
        self._buffers: Buffers | None = None
        self._engine: Any = None
        self._context: Any = None
        self._math = ""
        self._profiles: dict[str, Profile] = {}
        self._device: dict[str, DeviceArray] = {}
        self._host: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._graphs: GraphCache[tuple[tuple[int, ...], ...], tuple[Graph, dict[str, Any]]] = (
            GraphCache(1)
        )
        self._graph_fallback = ""
        self._plan_info: dict[str, Any] = {}
        self._batch_buckets: tuple[int, ...] = ()
        self._seq_buckets: tuple[int, ...] = ()

    # ----- build -----------------------------------------------------------------------
    def _build(self, model: ModelHandle, onnx_path: Path, timing: bytes) -> tuple[bytes, bytes, dict[str, Any]]:  # fmt: skip
        trt = self._trt
        counts = {"warnings": 0, "errors": 0}
        messages: list[str] = []

        class _Logger(trt.ILogger):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if severity <= trt.ILogger.Severity.ERROR:
                    counts["errors"] += 1
                elif severity <= trt.ILogger.Severity.WARNING:
                    counts["warnings"] += 1
                else:
                    return
                if len(messages) < 20:
                    messages.append(str(msg)[:300])

        logger = _Logger()
        builder = trt.Builder(logger)
        weakly_typed_fp16 = self._math == "fp16" and model.precision != "fp16"
        flags = 0
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly_typed is not None and not weakly_typed_fp16:
            flags |= 1 << int(strongly_typed)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        # From the path, not the bytes: the parser then finds model.onnx.data beside it.
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RunnerError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(
            trt.MemoryPoolType.WORKSPACE, int(self.options["workspace_mb"]) << 20
        )
        if allows_tf32(self._math):
            config.set_flag(trt.BuilderFlag.TF32)
        else:  # TensorRT enables TF32 by default: true fp32 must clear it
            config.clear_flag(trt.BuilderFlag.TF32)
        if weakly_typed_fp16:
            flag = getattr(trt.BuilderFlag, "FP16", None)
            if flag is None:
                raise BackendUnavailable(
                    f"TensorRT {trt.__version__} is strongly typed (no BuilderFlag.FP16): "
                    "export with --precision fp16 instead of math=fp16"
                )
            config.set_flag(flag)
        cache = config.create_timing_cache(timing)
        config.set_timing_cache(cache, False)
        profile = builder.create_optimization_profile()
        for name, p in self._profiles.items():
            profile.set_shape(name, min=p.min, opt=p.opt, max=p.max)
        config.add_optimization_profile(profile)
        started = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        build_s = time.perf_counter() - started
        if plan is None:
            raise RunnerError(
                f"TensorRT failed to build an engine from {onnx_path}: "
                + ("; ".join(messages[-3:]) or "no builder message")
            )
        new_timing = bytes(memoryview(config.get_timing_cache().serialize()))
        info = {
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_s": round(build_s, 3),
            "builder_log": {**counts, "messages": messages},
        }
        return bytes(memoryview(plan)), new_timing, info

    # ----- load ------------------------------------------------------------------------
    def load_impl(self, model: ModelHandle) -> None:
        self._math = math_mode(model.precision, str(self.options["math"]))
        self._graphs = GraphCache(int(self.options["graph_cache"]))  # ConfigError when < 1
        trt = _import_tensorrt()
        self._trt = trt
        device_id = int(self.options["device_id"])
        self._buffers = open_buffers(str(self.options["buffers"]), device_id)
        onnx_path = model.require_exported()
        max_seq = _max_seq(model, int(self.options["max_seq"]))
        max_batch = model.config.max_batch_size
        self._profiles = derive_profiles(
            model.inputs, max_batch, int(self.options["opt_batch"]), max_seq
        )
        self._batch_buckets = buckets_up_to(max_batch)
        self._seq_buckets = buckets_up_to(max_seq, smallest=16)
        gpu_name, capability = self._buffers.device_identity()
        manifest = json.loads(model.manifest_path.read_text())
        key = make_key(
            manifest, str(trt.__version__), gpu_name, capability, self._math, self._profiles,
            {"workspace_mb": self.options["workspace_mb"]},
        )  # fmt: skip
        folder = Path(str(self.options["engine_cache"])) if self.options["engine_cache"] else (
            model.version_dir / "engines"
        )  # fmt: skip
        cached = EngineCache(folder).get_or_build(
            key, lambda timing: self._build(model, onnx_path, timing)
        )
        self._plan_info = {"plan": str(cached.path), "built": cached.built,
                           "build_s": cached.manifest.get("build_s")}  # fmt: skip
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(cached.plan)
        if self._engine is None:
            raise RunnerError(f"TensorRT could not deserialize {cached.path}; delete it to rebuild")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RunnerError("TensorRT could not create an execution context (GPU memory?)")
        self._allocate()

    def _allocate(self) -> None:
        """Device and page-locked host buffers for every I/O tensor at its largest shape,
        bound once: addresses never change afterwards (CUDA graphs rely on that)."""
        trt, ctx, buffers = self._trt, self._context, self._buffers
        assert buffers is not None
        for spec in self._inputs:
            self._dtypes[spec.name] = np.dtype(trt.nptype(self._engine.get_tensor_dtype(spec.name)))
            self._set_shape(spec.name, self._profiles[spec.name].max)
        for spec in (*self._inputs, *self._outputs):
            if spec.name not in self._dtypes:
                self._dtypes[spec.name] = np.dtype(
                    trt.nptype(self._engine.get_tensor_dtype(spec.name))
                )
            shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise RunnerError(f"TensorRT left {spec.name!r} with unresolved shape {shape}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[spec.name].itemsize
            self._device[spec.name] = buffers.device_empty(nbytes)
            self._host[spec.name] = buffers.host_empty((max(nbytes, 1),), np.dtype(np.uint8))
            if not ctx.set_tensor_address(spec.name, self._device[spec.name].ptr):
                raise RunnerError(f"TensorRT refused the address of {spec.name!r}")

    # ----- run -------------------------------------------------------------------------
    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        profile = self._profiles[name]
        check_in_profile(name, shape, profile)
        if not self._context.set_input_shape(name, shape):
            raise RunnerError(
                f"TensorRT rejected input {name!r} shape {list(shape)} "
                f"(profile min {list(profile.min)}, max {list(profile.max)})"
            )

    def _stage_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        buffers = self._buffers
        assert buffers is not None
        for spec in self._inputs:
            array = np.ascontiguousarray(inputs[spec.name], dtype=self._dtypes[spec.name])
            host = self._host[spec.name][: array.nbytes]
            host[:] = array.reshape(-1).view(np.uint8)
            buffers.copy_htod(self._device[spec.name], host)

    def _enqueue(self) -> None:
        assert self._buffers is not None
        if not self._context.execute_async_v3(self._buffers.stream_handle):
            shapes = {s.name: list(self._context.get_tensor_shape(s.name)) for s in self._inputs}
            raise RunnerError(f"TensorRT execute_async_v3 returned False for input shapes {shapes}")

    def _fetch_outputs(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        buffers = self._buffers
        assert buffers is not None
        views = {}
        for spec in self._outputs:
            dtype, shape = self._dtypes[spec.name], shapes[spec.name]
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            view = self._host[spec.name][:nbytes]
            buffers.copy_dtoh(view, self._device[spec.name])
            views[spec.name] = (view, dtype, shape)
        buffers.synchronize()  # this runner's stream only
        return {
            name: view.view(dtype).reshape(shape).astype(np.float32, copy=True)
            for name, (view, dtype, shape) in views.items()
        }

    def _output_shapes(self) -> dict[str, tuple[int, ...]]:
        return {s.name: tuple(int(d) for d in self._context.get_tensor_shape(s.name))
                for s in self._outputs}  # fmt: skip

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if self.options["cuda_graph"] and not self._graph_fallback:
            return self._infer_graph(inputs)
        for spec in self._inputs:
            self._set_shape(spec.name, tuple(inputs[spec.name].shape))
        self._stage_inputs(inputs)
        self._enqueue()
        return self._fetch_outputs(self._output_shapes())

    def _infer_graph(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Pad to the bucket, replay (capturing on first use), slice the batch back."""
        padded: dict[str, np.ndarray] = {}
        for spec in self._inputs:
            array = inputs[spec.name]
            shape = bucket_shape(array.shape, spec.shape, self._batch_buckets, self._seq_buckets)
            out = np.full(shape, spec.pad_value, dtype=array.dtype)
            out[tuple(slice(0, d) for d in array.shape)] = array
            padded[spec.name] = out
        key = tuple(padded[s.name].shape for s in self._inputs)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key, padded)
            if entry is None:  # capture failed: plain enqueues from now on
                return self.infer_impl(inputs)
        graph, output_shapes = entry
        self._stage_inputs(padded)
        graph.replay()
        batch = next(iter(inputs.values())).shape[0]
        return {name: value[:batch] for name, value in self._fetch_outputs(output_shapes).items()}

    def _capture(self, key: tuple[tuple[int, ...], ...], padded: dict[str, np.ndarray]) -> Any:
        buffers = self._buffers
        assert buffers is not None
        for spec in self._inputs:
            self._set_shape(spec.name, tuple(padded[spec.name].shape))
        self._stage_inputs(padded)
        self._enqueue()  # warm-up outside capture (initialisation calls must not be captured)
        buffers.synchronize()
        try:
            graph = buffers.capture(self._enqueue)
        except Exception as exc:  # capture is best effort: say why, then run without graphs
            self._graph_fallback = f"CUDA graph capture failed ({type(exc).__name__}: {exc})"
            log.warning("tensorrt runner: %s; running plain enqueues", self._graph_fallback)
            return None
        entry = (graph, self._output_shapes())
        self._graphs.put(key, entry)
        return entry

    def close_impl(self) -> None:
        # TensorRT objects and allocations go before the context is popped (pycuda).
        self._graphs.clear()
        self._context = None
        self._engine = None
        self._device.clear()
        self._host.clear()
        if self._buffers is not None:
            self._buffers.close()
            self._buffers = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._trt is not None:
            info["tensorrt_version"] = str(self._trt.__version__)
            info["math_mode"] = self._math
            info["buffers"] = self._buffers.name if self._buffers is not None else None
            info["engine"] = self._plan_info
            info["cuda_graph"] = {
                "enabled": bool(self.options["cuda_graph"]) and not self._graph_fallback,
                "fallback_reason": self._graph_fallback or None,
                "graphs": len(self._graphs),
                "evictions": self._graphs.evictions,
            }
            info["verified_on_gpu"] = False
        return info
