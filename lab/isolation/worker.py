"""The runner worker: the only process that imports and calls a runner under test.

Started by `IsolatedRunner` as `python -m lab.isolation.worker SOCKET_FD INPUT_FD OUTPUT_FD`
with a scrubbed environment (no secret seed) and nothing of the harness's state: it gets a
plain model reference and the runner's spec and options, imports the runner, checks the
plugin rules, loads it, then answers INFER messages until CLOSE or until the parent goes
away. It never sees references, the checker, the audit selection or the clocks that count.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Any

import numpy as np

from lab.errors import InputError, LabError, RunnerError
from lab.isolation import wire

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to kill this process if the harness dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def _send_json(sock: socket.socket, payload: dict[str, Any]) -> None:
    sock.send(json.dumps(payload, default=str).encode()[: wire.MAX_MESSAGE])


def _load(sock: socket.socket, init: dict[str, Any]) -> Any:
    from lab.runners import create_runner

    runner = create_runner(init["spec"], init["options"])
    runner.load(init["handle"])
    return runner


def _serve(
    sock: socket.socket,
    runner: Any,
    inputs: wire.Arena,
    outputs: wire.Arena,
    spin_s: float = 0.0,
) -> None:
    """Answer INFER messages until CLOSE. The parent validated the inputs and validates the
    outputs, so the hot path calls the runner's hook directly."""
    specs = runner.model.inputs
    names = [s.name for s in specs]
    out_names = [s.name for s in runner.model.outputs]
    dtypes = [np.dtype(s.dtype) for s in specs]
    ranks = [len(s.shape) for s in specs]
    dims = wire.dims_struct(ranks)
    in_layouts, out_layouts = wire.Layouts(), wire.Layouts()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    receiver = wire.Receiver(sock)
    while True:
        while not wire.wait_readable(poller, spin_s, 3600.0):
            pass
        message = receiver.recv()
        if not message or message[:1] == wire.OP_CLOSE:
            return
        _, seq, arena_bytes = wire.HEAD.unpack_from(message)
        try:
            if arena_bytes > inputs.size:
                inputs.remap()
            key = message[wire.HEAD.size :]
            views = in_layouts.get(key)
            if views is None:
                shapes = wire.split_dims(dims.unpack_from(message, wire.HEAD.size), ranks)
                views = in_layouts.put(key, wire.read_tensors(inputs, dtypes, shapes))
            started = time.perf_counter_ns()
            result = runner.infer_impl(dict(zip(names, views)))
            hook_ns = time.perf_counter_ns() - started
            arrays = []
            for name in out_names:
                if name not in result:
                    raise RunnerError(f"runner {runner.name} did not return output {name!r}")
                array = np.asarray(result[name])
                if array.dtype not in wire.DTYPE_CODES:
                    raise RunnerError(
                        f"runner {runner.name} returned {name!r} with dtype {array.dtype}, "
                        f"which cannot be sent back (use a numeric dtype)"
                    )
                arrays.append(array)
            layout = tuple((a.dtype, a.shape) for a in arrays)
            cached = out_layouts.get(layout)
            if cached is None:
                total = sum(wire.aligned(a.nbytes) for a in arrays)
                outputs.reserve(total)
                views = wire.read_tensors(outputs, [d for d, _ in layout], [s for _, s in layout])
                suffix = b"".join(
                    wire.OUTPUT_HEAD.pack(wire.DTYPE_CODES[a.dtype], a.ndim)
                    + wire.encode_dims([a.shape])
                    for a in arrays
                )
                cached = out_layouts.put(layout, (views, suffix))
            out_views, suffix = cached
            for view, array in zip(out_views, arrays):
                np.copyto(view, array)
            sock.send(
                wire.HEAD.pack(wire.OP_OK, seq, outputs.size)
                + wire.HOOK_NS.pack(max(0, hook_ns))
                + suffix
            )
        except Exception as exc:  # the runner's failure is the parent's to report
            kind = wire.ERROR_INPUT if isinstance(exc, InputError) else wire.ERROR_RUNNER
            text = (
                str(exc)
                if isinstance(exc, LabError)
                else f"runner {runner.name} failed: {type(exc).__name__}: {exc}"
            )
            sock.send(
                wire.ERROR_HEAD.pack(wire.OP_ERROR, seq, kind)
                + text[: wire.MAX_ERROR_CHARS].encode(errors="replace")
            )


def main(argv: list[str]) -> int:
    _die_with_parent()
    sock_fd, input_fd, output_fd = (int(a) for a in argv)
    sock = socket.socket(fileno=sock_fd)
    init = pickle.loads(sock.recv(wire.MAX_MESSAGE))  # from the parent, which we trust
    inputs, outputs = wire.Arena(input_fd), wire.Arena(output_fd)
    try:
        runner = _load(sock, init)
    except LabError as exc:
        _send_json(sock, {"ok": False, "kind": type(exc).__name__, "error": str(exc)})
        return 2
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        _send_json(
            sock,
            {"ok": False, "kind": "RunnerError", "error": f"{type(exc).__name__}: {exc}"},
        )
        return 2
    _send_json(sock, {"ok": True, "name": runner.name, "describe": runner.describe()})
    try:
        _serve(sock, runner, inputs, outputs, float(init.get("spin_s", 0.0)))
    except (ConnectionError, struct.error):
        return 1
    finally:
        try:
            runner.close()
        except Exception:
            traceback.print_exc(file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
