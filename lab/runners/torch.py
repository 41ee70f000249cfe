"""PyTorch eager runner (the reference backend), with optional torch.compile and CUDA graphs.

Options:
    device       "cpu" | "cuda" | "cuda:N"
    dtype        "fp32" | "tf32" | "fp16" | "bf16": the module's weights (tf32: fp32 weights
                 with TF32 matrix products and convolutions; fp32 on CUDA turns TF32 *off*
                 for both, cuDNN convolutions included, whose default is on)
    threads      torch.set_num_threads when > 0
    compile      "" (eager) or a torch.compile mode: "default", "reduce-overhead",
                 "max-autotune", "max-autotune-no-cudagraphs"
    cuda_graph   capture CUDA graphs per shape bucket (CUDA only; batches padded up to
                 power-of-two buckets, at most `graph_cache` graphs kept, LRU)
    graph_cache  (default 8)

Inputs keep their dtypes: the model casts what it needs itself (the ranker takes log1p of
its fp32 counts in fp32 on purpose, then casts), exactly as the exported fp16 graph does.
Outputs come back as float32 numpy arrays. On CUDA, `last_device_ms` is the model's time on
the GPU from CUDA events (the base class's `last_infer_ms` includes the copies).
On CUDA: ran on an NVIDIA H200 (torch 2.11.0+cu130, benchmarks/gpu_check.py, 2026-11-30) in
fp32, tf32, fp16 and fp16 with CUDA graphs; `compile` on CUDA has not run on a GPU yet.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.errors import BackendUnavailable, ConfigError
from lab.repository import ModelHandle
from lab.runners.base import Runner
from lab.runners.shapes import GraphCache, bucket_shape, buckets_up_to

log = logging.getLogger(__name__)
DTYPES = ("fp32", "tf32", "fp16", "bf16")
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_torch_options(device: str, dtype: str, compile: str, cuda_graph: bool,
                        graph_cache: int) -> None:  # fmt: skip
    """Option values checked before anything heavy is imported."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown torch dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    if compile not in COMPILE_MODES:
        raise ConfigError(
            f"unknown torch compile mode {compile!r}: choose from {', '.join(COMPILE_MODES[1:])}"
        )
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ConfigError(f"unknown torch device {device!r}: cpu, cuda or cuda:N")
    if cuda_graph and not device.startswith("cuda"):
        raise ConfigError("cuda_graph needs device=cuda")
    if cuda_graph and compile == "reduce-overhead":
        raise ConfigError("compile=reduce-overhead already uses CUDA graphs: drop cuda_graph")
    if graph_cache < 1:
        raise ConfigError(f"graph_cache must be at least 1, got {graph_cache}")


class TorchRunner(Runner):
    name = "torch"

    def __init__(
        self,
        device: str = "cpu",
        dtype: str = "fp32",
        threads: int = 0,
        compile: str = "",
        cuda_graph: bool = False,
        graph_cache: int = 8,
    ) -> None:
        super().__init__(
            device=device,
            dtype=dtype,
            threads=threads,
            compile=compile,
            cuda_graph=cuda_graph,
            graph_cache=graph_cache,
        )
        self._module: Any = None
        self._torch: Any = None
        self._dtype: Any = None
        self._device: Any = None
        self._names: list[str] = []
        self._output_names: list[str] = []
        self._graphs: GraphCache[tuple[tuple[int, ...], ...], Any] = GraphCache(1)
        self._graph_fallback = ""
        self._buckets: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
        self._math = ""
        self.last_device_ms: float | None = None

    def load_impl(self, model: ModelHandle) -> None:
        dtype, device = str(self.options["dtype"]), str(self.options["device"])
        cuda_graph = bool(self.options["cuda_graph"])
        check_torch_options(device, dtype, str(self.options["compile"]), cuda_graph,
                            int(self.options["graph_cache"]))  # fmt: skip
        import torch

        from lab.weights import load_module

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(
                "torch runner: device=cuda asked for, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})"
            )
        if int(self.options["threads"]) > 0:
            torch.set_num_threads(int(self.options["threads"]))
        self._torch = torch
        self._device = torch.device(device)
        if self._device.type == "cuda":
            if self._device.index is None:  # "cuda": the current device, named by its index
                self._device = torch.device("cuda", torch.cuda.current_device())
            if self._device.index >= torch.cuda.device_count():
                raise BackendUnavailable(
                    f"torch runner: device={device} asked for, but torch sees "
                    f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0 to "
                    f"cuda:{torch.cuda.device_count() - 1})"
                )
            torch.cuda.set_device(self._device)
            tf32 = dtype == "tf32"  # process-wide switches: this runner owns its worker
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            self._math = dtype
        else:
            self._math = "fp32" if dtype == "tf32" else dtype
        self._dtype = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
                       "bf16": torch.bfloat16}[dtype]  # fmt: skip
        module = load_module(model).to(device=self._device, dtype=self._dtype).eval()
        mode = str(self.options["compile"])
        self._module = torch.compile(module, mode=mode) if mode else module
        self._names = [s.name for s in model.inputs]
        self._output_names = [s.name for s in model.outputs]
        if cuda_graph:
            self._graphs = GraphCache(int(self.options["graph_cache"]))
            max_seq = int(getattr(model.size_config, "max_seq_len", 512))
            self._buckets = (buckets_up_to(model.config.max_batch_size),
                             buckets_up_to(max_seq, smallest=16))  # fmt: skip

    def _tensors(self, inputs: Mapping[str, np.ndarray]) -> list[Any]:
        """Inputs on the device with their own dtypes (never cast: the model decides)."""
        torch = self._torch
        return [
            torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self._device, non_blocking=True)
            for n in self._names
        ]

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        torch = self._torch
        if self.options["cuda_graph"] and not self._graph_fallback:
            return self._infer_graph(inputs)
        tensors = self._tensors(inputs)
        if self._device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            with torch.inference_mode():
                result = self._module(*tensors)
            end.record()
            outputs = self._to_numpy(result)  # the copy to the host waits for the model
            self.last_device_ms = float(start.elapsed_time(end))
            return outputs
        with torch.inference_mode():
            result = self._module(*tensors)
        return self._to_numpy(result)

    def _to_numpy(self, result: Any, batch: int | None = None) -> dict[str, np.ndarray]:
        if isinstance(result, self._torch.Tensor):
            result = (result,)
        return {
            name: value[:batch].detach().float().cpu().numpy()
            for name, value in zip(self._output_names, result)
        }

    def _infer_graph(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Pad to the shape bucket, copy into the graph's static inputs, replay."""
        torch = self._torch
        batch = next(iter(inputs.values())).shape[0]
        padded = {}
        for spec in self._inputs:
            array = inputs[spec.name]
            shape = bucket_shape(array.shape, spec.shape, *self._buckets)
            out = np.full(shape, spec.pad_value, dtype=array.dtype)
            out[tuple(slice(0, d) for d in array.shape)] = array
            padded[spec.name] = out
        key = tuple(padded[n].shape for n in self._names)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key, padded)
            if entry is None:
                return self.infer_impl(inputs)
        graph, static_in, static_out = entry
        for tensor, name in zip(static_in, self._names):
            tensor.copy_(torch.from_numpy(padded[name]), non_blocking=True)
        graph.replay()
        return self._to_numpy(static_out, batch)

    def _capture(self, key: tuple[tuple[int, ...], ...], padded: dict[str, np.ndarray]) -> Any:
        """Warm up on a side stream, then capture (thread-local mode); None when it fails."""
        torch = self._torch
        static_in = self._tensors(padded)
        side = torch.cuda.Stream(device=self._device)
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.inference_mode():
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self._module(*static_in)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    static_out = self._module(*static_in)
        except RuntimeError as exc:
            self._graph_fallback = f"CUDA graph capture failed ({exc})".splitlines()[0]
            log.warning("torch runner: %s; running eagerly", self._graph_fallback)
            return None
        entry = (graph, static_in, static_out)
        self._graphs.put(key, entry)
        return entry

    def close_impl(self) -> None:
        self._graphs.clear()
        self._module = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._torch is not None:
            info["math_mode"] = self._math
            info["torch_version"] = str(self._torch.__version__)
            if self.options["cuda_graph"]:
                info["cuda_graph"] = {
                    "enabled": not self._graph_fallback,
                    "fallback_reason": self._graph_fallback or None,
                    "graphs": len(self._graphs),
                    "evictions": self._graphs.evictions,
                }
            if self._device is not None and self._device.type == "cuda":
                # CUDA eager and CUDA graphs ran on an H200; torch.compile on CUDA has not.
                info["verified_on_gpu"] = not self.options["compile"]
        return info
