"""Device memory, page-locked host memory, streams, events and graph capture for the
TensorRT runner, behind one interface with two implementations:

    PycudaBuffers  pycuda, attached to the device's *primary* context (the one the CUDA
                   runtime, and so PyTorch and TensorRT, use): `Device(i).retain_primary_context()`
                   pushed while in use, never `pycuda.autoinit` (that creates a second,
                   non-primary context that fights PyTorch's).
    TorchBuffers   PyTorch's CUDA caching allocator and streams: the path when pycuda is not
                   installed (it compiles against the CUDA toolkit, which a wheel-only machine
                   may lack).

`open_buffers("auto" | "pycuda" | "torch", device_id)` picks one; each fails with one line
naming what is missing. UNVERIFIED: no GPU has run this module yet (benchmarks/gpu_check.py
does, through tests/test_gpu_path.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from lab.errors import BackendUnavailable, ConfigError

BUFFER_BACKENDS = ("auto", "pycuda", "torch")


class DeviceArray(Protocol):
    ptr: int
    nbytes: int


class Graph(Protocol):
    def replay(self) -> None: ...


class Buffers(Protocol):
    """What the TensorRT runner needs from a CUDA memory library."""

    name: str
    stream_handle: int

    def device_empty(self, nbytes: int) -> DeviceArray: ...
    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...
    def copy_htod(self, dst: DeviceArray, src: np.ndarray) -> None: ...
    def copy_dtoh(self, dst: np.ndarray, src: DeviceArray) -> None: ...
    def synchronize(self) -> None: ...
    def event_pair(self) -> tuple[Callable[[], None], Callable[[], None], Callable[[], float]]: ...
    def capture(self, enqueue: Callable[[], None]) -> Graph: ...
    def device_identity(self) -> tuple[str, tuple[int, int]]: ...
    def close(self) -> None: ...


# ----- PyTorch ---------------------------------------------------------------------------
class _TorchArray:
    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor
        self.ptr = int(tensor.data_ptr())
        self.nbytes = int(tensor.numel())


class _TorchGraph:
    def __init__(self, graph: Any, torch: Any, stream: Any) -> None:
        self._graph, self._torch, self._stream = graph, torch, stream

    def replay(self) -> None:
        with self._torch.cuda.stream(self._stream):  # replay launches on the current stream
            self._graph.replay()


class TorchBuffers:
    name = "torch"

    def __init__(self, device_id: int) -> None:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - torch is a core dependency
            raise BackendUnavailable("CUDA buffers need torch with CUDA") from exc
        if not torch.cuda.is_available():
            raise BackendUnavailable("CUDA buffers through torch: torch sees no CUDA GPU")
        if device_id >= torch.cuda.device_count():
            raise ConfigError(
                f"device_id {device_id}: torch sees {torch.cuda.device_count()} CUDA device(s)"
            )
        self._torch = torch
        self.device = torch.device(f"cuda:{device_id}")
        self.stream = torch.cuda.Stream(device=self.device)
        self.stream_handle = int(self.stream.cuda_stream)

    def device_empty(self, nbytes: int) -> _TorchArray:
        return _TorchArray(self._torch.empty(nbytes, dtype=self._torch.uint8, device=self.device))

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        pinned = self._torch.empty(max(nbytes, 1), dtype=self._torch.uint8).pin_memory()
        # numpy view over pinned memory; keep the tensor alive through the array's base
        return pinned.numpy()[:nbytes].view(dtype).reshape(shape)

    def _flat(self, a: _TorchArray, nbytes: int) -> Any:
        return a.tensor[:nbytes]

    def copy_htod(self, dst: DeviceArray, src: np.ndarray) -> None:
        host = self._torch.from_numpy(np.ascontiguousarray(src).reshape(-1).view(np.uint8))
        with self._torch.cuda.stream(self.stream):
            self._flat(dst, host.numel()).copy_(host, non_blocking=True)  # type: ignore[arg-type]

    def copy_dtoh(self, dst: np.ndarray, src: DeviceArray) -> None:
        host = self._torch.from_numpy(dst.reshape(-1).view(np.uint8))
        with self._torch.cuda.stream(self.stream):
            host.copy_(self._flat(src, host.numel()), non_blocking=True)  # type: ignore[arg-type]

    def synchronize(self) -> None:
        self.stream.synchronize()  # this stream only: never the whole device

    def event_pair(self) -> tuple[Callable[[], None], Callable[[], None], Callable[[], float]]:
        start = self._torch.cuda.Event(enable_timing=True)
        end = self._torch.cuda.Event(enable_timing=True)
        return (
            lambda: start.record(self.stream),
            lambda: end.record(self.stream),
            lambda: float(start.elapsed_time(end)),
        )

    def capture(self, enqueue: Callable[[], None]) -> _TorchGraph:
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            enqueue()
        return _TorchGraph(graph, torch, self.stream)

    def device_identity(self) -> tuple[str, tuple[int, int]]:
        major, minor = self._torch.cuda.get_device_capability(self.device)
        return str(self._torch.cuda.get_device_name(self.device)), (int(major), int(minor))

    def close(self) -> None:
        self.stream.synchronize()


# ----- pycuda ----------------------------------------------------------------------------
class _PycudaArray:
    def __init__(self, allocation: Any, nbytes: int) -> None:
        self.allocation = allocation
        self.ptr = int(allocation)
        self.nbytes = nbytes


class _PycudaGraph:
    def __init__(self, exec_graph: Any, stream: Any) -> None:
        self._exec, self._stream = exec_graph, stream

    def replay(self) -> None:
        self._exec.launch(self._stream)


class PycudaBuffers:
    name = "pycuda"

    def __init__(self, device_id: int) -> None:
        try:
            import pycuda.driver as cuda
        except ImportError as exc:
            raise BackendUnavailable(
                "pycuda is not installed (pip install pycuda; it compiles against the CUDA "
                "toolkit): use buffers=torch"
            ) from exc
        try:
            cuda.init()
            count = cuda.Device.count()
        except cuda.Error as exc:
            raise BackendUnavailable(f"pycuda cannot see a CUDA GPU: {exc}") from exc
        if device_id >= count:
            raise ConfigError(f"device_id {device_id}: pycuda sees {count} CUDA device(s)")
        self._cuda = cuda
        # The primary context: shared with the CUDA runtime (PyTorch, TensorRT). Pushed for
        # the runner's lifetime; every call below runs in it.
        self._device = cuda.Device(device_id)
        self._context = self._device.retain_primary_context()
        self._context.push()
        self.stream = cuda.Stream()
        self.stream_handle = int(self.stream.handle)

    def device_empty(self, nbytes: int) -> _PycudaArray:
        return _PycudaArray(self._cuda.mem_alloc(max(nbytes, 1)), nbytes)

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self._cuda.pagelocked_empty(shape, dtype)  # type: ignore[no-any-return]

    def copy_htod(self, dst: DeviceArray, src: np.ndarray) -> None:
        self._cuda.memcpy_htod_async(dst.ptr, np.ascontiguousarray(src), self.stream)

    def copy_dtoh(self, dst: np.ndarray, src: DeviceArray) -> None:
        self._cuda.memcpy_dtoh_async(dst, src.ptr, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def event_pair(self) -> tuple[Callable[[], None], Callable[[], None], Callable[[], float]]:
        start, end = self._cuda.Event(), self._cuda.Event()

        def elapsed_ms() -> float:
            end.synchronize()
            return float(start.time_till(end))

        return (lambda: start.record(self.stream), lambda: end.record(self.stream), elapsed_ms)

    def capture(self, enqueue: Callable[[], None]) -> _PycudaGraph:
        begin = getattr(self.stream, "begin_capture", None)
        if begin is None:
            raise RuntimeError("this pycuda has no stream capture (Stream.begin_capture)")
        mode = getattr(self._cuda, "capture_mode", None)
        begin(mode.THREAD_LOCAL) if mode is not None else begin()
        try:
            enqueue()
        finally:
            graph = self.stream.end_capture()
        return _PycudaGraph(graph.instantiate(), self.stream)

    def device_identity(self) -> tuple[str, tuple[int, int]]:
        major, minor = self._device.compute_capability()
        return str(self._device.name()), (int(major), int(minor))

    def close(self) -> None:
        self.stream.synchronize()
        self._context.pop()
        self._context.detach()


def open_buffers(kind: str, device_id: int) -> Buffers:
    """`auto` prefers pycuda and falls back to torch when pycuda is not installed."""
    if kind not in BUFFER_BACKENDS:
        raise ConfigError(f"unknown buffers {kind!r}: choose from {', '.join(BUFFER_BACKENDS)}")
    if kind == "pycuda":
        return PycudaBuffers(device_id)
    if kind == "torch":
        return TorchBuffers(device_id)
    try:
        return PycudaBuffers(device_id)
    except BackendUnavailable as pycuda_missing:
        try:
            return TorchBuffers(device_id)
        except BackendUnavailable as torch_missing:
            raise BackendUnavailable(f"{pycuda_missing}; {torch_missing}") from torch_missing
