"""What crosses the boundary between the harness and its runner worker, and how.

Tensors travel through two shared-memory arenas (inputs written by the parent, outputs by
the worker); each is a memfd sealed against shrinking, so it can grow when a batch needs
more room but the other side can never pull pages out from under a mapping. Control
messages go over a SOCK_SEQPACKET socket pair (one send is one message) and are fixed
binary layouts read with `struct`: the parent never unpickles anything the worker sends.
Only the start-up message (parent -> worker: the plain model reference and runner options)
is a pickle, in the direction where the reader trusts the writer.

Hot-path messages (names and dtypes come from the model's specs, known to both sides):

    parent -> worker  INFER  op 'I', seq u32, input arena bytes u64, every input's dims (i64)
    worker -> parent  OK     op 'O', seq u32, output arena bytes u64, the hook's time in ns
                             by the worker's clock u64 (diagnostics only: never a result),
                             per output in spec order: dtype code u8, rank u8, dims (i64)
                      ERROR  op 'E', seq u32, kind u8 (0 runner, 1 input), UTF-8 message
    parent -> worker  CLOSE  op 'C'

Tensors are packed in spec order, each at an offset aligned to `ALIGN` bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import mmap
import os
import select
import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lab.errors import BackendUnavailable, RunnerError

ALIGN = 64
MAX_MESSAGE = 1 << 20
MAX_ERROR_CHARS = 2000
INITIAL_ARENA_BYTES = 1 << 20

OP_INFER, OP_OK, OP_ERROR, OP_CLOSE = b"I", b"O", b"E", b"C"
ERROR_RUNNER, ERROR_INPUT = 0, 1
HEAD = struct.Struct("<cIQ")  # op, seq, arena bytes
ERROR_HEAD = struct.Struct("<cIB")  # op, seq, kind
HOOK_NS = struct.Struct("<Q")  # in OK replies, after HEAD
OUTPUT_HEAD = struct.Struct("<BB")  # dtype code, rank

# Dtypes a tensor may have on the wire (the index is the code).
DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(name)
    for name in (
        "bool",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "uint64",
        "int64",
        "float16",
        "float32",
        "float64",
    )
)
DTYPE_CODES = {dtype: code for code, dtype in enumerate(DTYPES)}


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class Arena:
    """A shared-memory region both processes map; only the parent creates one."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.map: mmap.mmap | None = None
        self.remap()

    @classmethod
    def create(cls, name: str, size: int = INITIAL_ARENA_BYTES) -> Arena:
        if not hasattr(os, "memfd_create"):
            raise BackendUnavailable(
                "process isolation needs Linux (memfd_create); use --isolation none elsewhere"
            )
        fd = os.memfd_create(name, os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, max(size, ALIGN))
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        return cls(fd)

    def remap(self) -> None:
        """Map the region at its current size. Views on an older mapping stay valid: the
        old map is dropped, not closed, and lives on while anything still points into it."""
        size = os.fstat(self.fd).st_size
        if size != self.size or self.map is None:
            self.map = mmap.mmap(self.fd, size)
            self.size = size

    def reserve(self, size: int) -> None:
        """Grow (never shrink) to hold `size` bytes; doubles to keep regrowth rare."""
        if size > self.size:
            os.ftruncate(self.fd, max(size, 2 * self.size))
            self.remap()

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """An array over the arena's bytes; refuses anything that would reach past its end."""
        nbytes = math.prod(shape) * dtype.itemsize
        if offset < 0 or offset + nbytes > self.size:
            raise RunnerError(
                f"tensor of shape {list(shape)} at offset {offset} does not fit the "
                f"{self.size}-byte shared arena"
            )
        return np.ndarray(shape, dtype, buffer=self.map, offset=offset)

    def close(self) -> None:
        self.map = None
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Receiver:
    """Receives whole messages into one buffer allocated once (a fresh 1 MiB buffer per
    recv() would cost more than the rest of the exchange)."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buffer = bytearray(MAX_MESSAGE)
        self.view = memoryview(self.buffer)

    def recv(self) -> bytes:
        """The next message; b"" at the end of the stream."""
        n = self.sock.recv_into(self.buffer, MAX_MESSAGE)
        return bytes(self.view[:n])


class Layouts:
    """Views over an arena for the layouts that recur (the same shapes batch after batch), so
    a repeated layout costs a dict lookup. A view made before the arena grew stays valid: the
    old mapping shows the same shared pages."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self.views: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        return self.views.get(key)

    def put(self, key: Any, value: Any) -> Any:
        if len(self.views) >= self.limit:
            self.views.clear()
        self.views[key] = value
        return value


def wait_readable(poller: select.poll, spin_s: float, timeout_s: float) -> bool:
    """Wait for a message: first spin (polling without sleeping, yielding the core to anyone
    who wants it) for `spin_s`, then sleep in poll() for the rest of `timeout_s`. On a VM a
    sleeping process takes tens of microseconds to wake, more than the whole exchange costs,
    so a short spin keeps the round trip cheap when the answer is about to arrive."""
    if spin_s > 0:
        until = time.perf_counter() + spin_s
        while True:
            if poller.poll(0):
                return True
            if time.perf_counter() >= until:
                break
            os.sched_yield()
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def read_tensors(
    arena: Arena, dtypes: Sequence[np.dtype], shapes: Sequence[tuple[int, ...]]
) -> list[np.ndarray]:
    """Views of tensors packed in order, each at an `ALIGN`ed offset (both sides' layout)."""
    views, offset = [], 0
    for dtype, shape in zip(dtypes, shapes):
        view = arena.view(offset, dtype, shape)
        views.append(view)
        offset += aligned(view.nbytes)
    return views


def dims_struct(ranks: Sequence[int]) -> struct.Struct:
    """The layout of every input's dims in an INFER message (ranks are fixed by the specs)."""
    return struct.Struct(f"<{sum(ranks)}q")


def split_dims(flat: Sequence[int], ranks: Sequence[int]) -> list[tuple[int, ...]]:
    shapes, start = [], 0
    for rank in ranks:
        shape = tuple(flat[start : start + rank])
        if any(d < 0 for d in shape):
            raise RunnerError(f"negative dimension in {list(shape)}")
        shapes.append(shape)
        start += rank
    return shapes


def encode_dims(shapes: Sequence[tuple[int, ...]]) -> bytes:
    dims = [d for shape in shapes for d in shape]
    return struct.pack(f"<{len(dims)}q", *dims)


def decode_dims(data: bytes, offset: int, rank: int) -> tuple[tuple[int, ...], int]:
    end = offset + 8 * rank
    if end > len(data):
        raise RunnerError("truncated message from the runner worker")
    dims = struct.unpack_from(f"<{rank}q", data, offset)
    if any(d < 0 for d in dims):
        raise RunnerError(f"the runner worker sent a negative dimension {list(dims)}")
    return tuple(dims), end
