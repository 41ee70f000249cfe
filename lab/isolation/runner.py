"""`IsolatedRunner`: a runner under test, driven from the harness but run in its own process.

To the harness it is an ordinary `Runner` (the base class validates inputs and outputs here,
in the trusted process); `load_impl` starts the worker (lab/isolation/worker.py) and
`infer_impl` ships each batch through shared memory and waits for the answer. The parent
never imports the runner's code. A worker that dies (signal, exit, out-of-memory kill) or
stops answering within `infer_timeout_s` is detected, killed if needed, and every later call
raises `WorkerLost` with the reason, so a run ends INVALID instead of hanging.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np

from lab.errors import (
    BackendUnavailable,
    ConfigError,
    InputError,
    ModelNotFound,
    PluginError,
    RunnerError,
    WorkerLost,
)
from lab.isolation import wire
from lab.repository import ModelHandle
from lab.runners.base import Runner
from lab.workload import SECRET_SEED_ENV

POLL_S = 0.5  # how often a wait checks that the worker is still alive
# Spinning before sleeping (see wire.wait_readable): the parent for the answer, the worker
# for the next batch after answering one (the harness usually sends it within a few us).
PARENT_SPIN_S = 0.0003
WORKER_SPIN_S = 0.002
MAX_PARENT_SPIN_S = 0.002  # the widest spin around an answer's expected time
CLOSE_TIMEOUT_S = 10.0
LOAD_ERRORS: dict[str, type[Exception]] = {
    "ConfigError": ConfigError,
    "ModelNotFound": ModelNotFound,
    "PluginError": PluginError,
    "BackendUnavailable": BackendUnavailable,
    "InputError": InputError,
}


def worker_environment() -> dict[str, str]:
    """The parent's environment without the secret seed, able to import `lab`."""
    env = {k: v for k, v in os.environ.items() if k != SECRET_SEED_ENV}
    source = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    return env


def _stdout_target() -> int | None:
    """The worker prints to our stderr, so a plugin's prints never mix into reports."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return None


def _how_it_ended(returncode: int | None) -> str:
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by signal {name}{hint}"
    return f"exited with code {returncode}"


_thread_state = threading.local()
PR_SET_TIMERSLACK = 29


def _tighten_timers() -> None:
    """Ask Linux to wake this thread on time (its default timer slack is 50 us, as long as
    the whole exchange with the worker): the early wake-up before an answer is due relies
    on it. Per thread, once; harmless where prctl is missing."""
    _thread_state.tight_timers = True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class AnswerTime:
    """How long answers of one batch size take: a moving mean and mean deviation (as TCP
    estimates round trips), and from them the window to spin through around the mean."""

    def __init__(self, took_s: float) -> None:
        self.mean_s = took_s
        self.deviation_s = took_s / 4

    def update(self, took_s: float) -> None:
        error = took_s - self.mean_s
        self.mean_s += 0.2 * error
        self.deviation_s += 0.2 * (abs(error) - self.deviation_s)

    def window_s(self, least_s: float) -> float:
        """Three deviations, at least `least_s`; at most a quarter of the mean (a long batch
        is not worth a long spin) and MAX_PARENT_SPIN_S."""
        return max(least_s, min(3 * self.deviation_s, self.mean_s / 4, MAX_PARENT_SPIN_S))


class IsolatedRunner(Runner):
    """Runs `spec` (a built-in name or a plugin) with `options` in a worker process."""

    name: ClassVar[str] = "isolated"
    may_stall: ClassVar[bool] = True

    def __init__(
        self,
        spec: str,
        options: Mapping[str, Any] | None = None,
        *,
        load_timeout_s: float = 300.0,
        infer_timeout_s: float = 60.0,
        spin_s: float = PARENT_SPIN_S,
        worker_spin_s: float = WORKER_SPIN_S,
    ) -> None:
        super().__init__(**dict(options or {}))
        if not load_timeout_s > 0 or not infer_timeout_s > 0:
            raise ConfigError("the worker's load and infer timeouts must be positive")
        self.spec = spec
        self.runner_name = spec
        self.load_timeout_s = float(load_timeout_s)
        self.infer_timeout_s = float(infer_timeout_s)
        self.spin_s = float(spin_s)
        self.worker_spin_s = float(worker_spin_s)
        self._poller = select.poll()
        self.reported: dict[str, Any] = {}
        self.lost: str | None = None
        self.load_s: float | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._sock: socket.socket | None = None
        self._arena_in: wire.Arena | None = None
        self._arena_out: wire.Arena | None = None
        self._lock = threading.Lock()
        self._seq = 0
        self._ready_at: float | None = None
        self._cpu_at_ready = 0.0
        self._cpu_last = 0.0
        self._dims = wire.dims_struct(())
        self._input_names: list[str] = []
        self._input_dtypes_list: list[np.dtype] = []
        self._output_names: list[str] = []
        self._in_layouts = wire.Layouts()
        self._out_layouts = wire.Layouts()
        self._answer_times: dict[int, AnswerTime] = {}  # per batch size
        # What the worker says its hook took (its own clock: for diagnostics, never results).
        self.worker_hook_ns = 0

    # ----- hooks -------------------------------------------------------------------------
    def _open_wire(self, model: ModelHandle, prefix: str) -> None:
        """The model's wire layout and the two shared-memory arenas (inputs, outputs)."""
        self._dims = wire.dims_struct([len(spec.shape) for spec in model.inputs])
        self._input_names = [spec.name for spec in model.inputs]
        self._input_dtypes_list = [np.dtype(spec.dtype) for spec in model.inputs]
        self._output_names = [spec.name for spec in model.outputs]
        self._arena_in = wire.Arena.create(f"{prefix}-inputs")
        self._arena_out = wire.Arena.create(f"{prefix}-outputs")

    def load_impl(self, model: ModelHandle) -> None:
        self._open_wire(model, "servelab")
        assert self._arena_in is not None and self._arena_out is not None
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = (child_end.fileno(), self._arena_in.fd, self._arena_out.fd)
        started = time.perf_counter()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lab.isolation.worker", *(str(fd) for fd in fds)],
                pass_fds=fds,
                env=worker_environment(),
                stdin=subprocess.DEVNULL,
                stdout=_stdout_target(),
                start_new_session=True,
            )
        finally:
            child_end.close()
        self._sock = parent_end
        self._receiver = wire.Receiver(parent_end)
        self._poller = select.poll()
        self._poller.register(parent_end, select.POLLIN)
        init = {
            "spec": self.spec,
            "options": dict(self.options),
            "handle": model,
            "spin_s": self.worker_spin_s,
        }
        try:
            parent_end.send(pickle.dumps(init))
            reply = self._receive(self.load_timeout_s, f"loading {model.name}")
        except BaseException:
            self._stop()
            raise
        self.load_s = time.perf_counter() - started
        try:
            info = json.loads(reply)
        except ValueError:
            info = {"ok": False, "error": "the runner worker sent an unreadable reply"}
        if not isinstance(info, dict) or not info.get("ok"):
            self._stop()
            error = str(info.get("error", "unknown error")) if isinstance(info, dict) else ""
            kind = LOAD_ERRORS.get(str(info.get("kind")) if isinstance(info, dict) else "")
            raise (kind or RunnerError)(error[: wire.MAX_ERROR_CHARS])
        self.runner_name = str(info.get("name", self.spec))[:200]
        described = info.get("describe")
        self.reported = described if isinstance(described, dict) else {}
        self._ready_at = time.perf_counter()
        self._cpu_at_ready = self._cpu_last = self._worker_cpu_s()

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.model is not None
        with self._lock:
            if self.lost is not None:
                raise WorkerLost(self.lost)
            assert self._sock is not None and self._arena_in is not None
            arrays = [inputs[name] for name in self._input_names]
            shapes = tuple(a.shape for a in arrays)
            views = self._in_layouts.get(shapes)
            if views is None:
                total = sum(wire.aligned(a.nbytes) for a in arrays)
                self._arena_in.reserve(total)
                views = self._in_layouts.put(
                    shapes, wire.read_tensors(self._arena_in, self._input_dtypes_list, shapes)
                )
            for view, array in zip(views, arrays):
                np.copyto(view, array)
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            self._sock.send(
                wire.HEAD.pack(wire.OP_INFER, self._seq, self._arena_in.size)
                + self._dims.pack(*[d for shape in shapes for d in shape])
            )
            batch = shapes[0][0] if shapes else 0
            reply = self._receive(self.infer_timeout_s, f"running a batch of {batch}", batch)
            return self._decode(reply, self._seq)

    def close_impl(self) -> None:
        self._stop()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.runner_name,
            "class": str(self.reported.get("class", "?")),  # as the worker reports it
            "spec": self.spec,
            "options": self.options,
            "isolation": "process",
            "reported_by_worker": self.reported,
        }

    # ----- accounting --------------------------------------------------------------------
    def usage(self) -> dict[str, Any]:
        """The worker as the parent measured it: load time, CPU and wall time since the
        load finished, and how it ended. CPU time comes from the kernel, wall time from
        the parent's clock, so neither can be forged by the runner."""
        alive = self.process is not None and self.process.poll() is None
        if alive:
            self._cpu_last = self._worker_cpu_s()
        wall = time.perf_counter() - self._ready_at if self._ready_at is not None else 0.0
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        cpu = max(0.0, self._cpu_last - self._cpu_at_ready)
        return {
            "pid": self.process.pid if self.process is not None else None,
            "load_s": self.load_s,
            "load_timeout_s": self.load_timeout_s,
            "infer_timeout_s": self.infer_timeout_s,
            "cpu_s": cpu,
            "wall_s": wall,
            "cores": cores,
            "cpu_over_budget": bool(wall > 0 and cpu > cores * wall),
            "lost": self.lost,
            "exit": None if self.returncode is None else _how_it_ended(self.returncode),
        }

    def _worker_cpu_s(self) -> float:
        if self.process is None:
            return 0.0
        try:
            import psutil

            times = psutil.Process(self.process.pid).cpu_times()
        except Exception:  # gone, or psutil cannot read it: keep the last reading
            return self._cpu_last
        return float(times.user + times.system + times.children_user + times.children_system)

    # ----- plumbing ----------------------------------------------------------------------
    def _receive(self, timeout_s: float, doing: str, batch: int = 0) -> bytes:
        """One message from the worker, or WorkerLost when it dies or stays silent."""
        assert self._sock is not None and self.process is not None
        sent = time.perf_counter()
        if not self._wait_briefly(batch):
            deadline = time.monotonic() + timeout_s
            while not self._poller.poll(int(POLL_S * 1000)):
                if self.process.poll() is not None:
                    self._lose(
                        f"runner worker died: {_how_it_ended(self.process.returncode)}", doing
                    )
                if time.monotonic() >= deadline:
                    self._lose(f"runner worker hung: no answer within {timeout_s:g} s", doing)
        if batch:
            self._answered(batch, time.perf_counter() - sent)
        message = b""
        with contextlib.suppress(OSError):  # a reset connection is a dead worker too
            message = self._receiver.recv()
        if message:
            return message
        # End of stream: the worker is gone; give the kernel a moment to reap it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)
        self._lose(f"runner worker died: {_how_it_ended(self.process.poll())}", doing)

    def _answered(self, batch: int, took_s: float) -> None:
        times = self._answer_times.get(batch)
        if times is None:
            self._answer_times[batch] = AnswerTime(took_s)
        else:
            times.update(took_s)

    def _wait_briefly(self, batch: int) -> bool:
        """True when the answer arrived within about the time it usually takes. On a VM a
        sleeping process takes tens of microseconds to wake, more than the rest of the
        exchange: so sleep until shortly before the answer is due (waking early if it comes
        sooner), then spin through the time it is likely to come, yielding the core to
        anyone who wants it. The window follows how much answers of this batch size vary
        (`AnswerTime`). Answers that take much longer than usual fall back to sleeping."""
        if not self.spin_s > 0:
            return False
        if not getattr(_thread_state, "tight_timers", False):
            _tighten_timers()
        times = self._answer_times.get(batch)
        window_s = self.spin_s if times is None else times.window_s(self.spin_s)
        if times is not None and times.mean_s > window_s:
            assert self._sock is not None
            ready, _, _ = select.select([self._sock], [], [], times.mean_s - window_s)
            if ready:
                return True
        return wire.wait_readable(self._poller, 2 * window_s, 0.0)

    def _lose(self, what: str, doing: str) -> NoReturn:
        self.lost = f"{what} while {doing}"
        self._stop(kill=True)
        raise WorkerLost(self.lost)

    def _decode(self, reply: bytes, seq: int) -> dict[str, np.ndarray]:
        assert self.model is not None and self._arena_out is not None
        op = reply[:1]
        if op == wire.OP_ERROR and len(reply) >= wire.ERROR_HEAD.size:
            _, got, kind = wire.ERROR_HEAD.unpack_from(reply)
            text = reply[wire.ERROR_HEAD.size :].decode(errors="replace")[: wire.MAX_ERROR_CHARS]
            raise (InputError if kind == wire.ERROR_INPUT else RunnerError)(text)
        if op != wire.OP_OK or len(reply) < wire.HEAD.size + wire.HOOK_NS.size:
            raise RunnerError("the runner worker sent an unreadable reply")
        _, got, arena_bytes = wire.HEAD.unpack_from(reply)
        if got != seq:
            raise RunnerError(f"the runner worker answered batch {got}, expected {seq}")
        if arena_bytes > self._arena_out.size:
            self._arena_out.remap()
        (self.worker_hook_ns,) = wire.HOOK_NS.unpack_from(reply, wire.HEAD.size)
        layout = reply[wire.HEAD.size + wire.HOOK_NS.size :]
        views = self._out_layouts.get(layout)
        if views is None:
            views = self._out_layouts.put(layout, self._output_views(layout))
        return {name: view.copy() for name, view in zip(self._output_names, views)}

    def _output_views(self, layout: bytes) -> list[np.ndarray]:
        """Views of the outputs a reply describes, checked against the arena's bounds."""
        assert self._arena_out is not None
        position, dtypes, shapes = 0, [], []
        for _ in self._output_names:
            if position + wire.OUTPUT_HEAD.size > len(layout):
                raise RunnerError("the runner worker sent a truncated reply")
            code, rank = wire.OUTPUT_HEAD.unpack_from(layout, position)
            if code >= len(wire.DTYPES):
                raise RunnerError(f"the runner worker sent an unknown dtype code {code}")
            shape, position = wire.decode_dims(layout, position + wire.OUTPUT_HEAD.size, rank)
            dtypes.append(wire.DTYPES[code])
            shapes.append(shape)
        return wire.read_tensors(self._arena_out, dtypes, shapes)

    def _stop(self, kill: bool = False) -> None:
        process, sock = self.process, self._sock
        if process is not None and process.poll() is None:
            if not kill and sock is not None:
                self._cpu_last = self._worker_cpu_s()
                try:
                    sock.send(wire.OP_CLOSE)
                    process.wait(timeout=CLOSE_TIMEOUT_S)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if process.poll() is None:
                process.kill()
                process.wait()
        if process is not None:
            self.returncode = process.returncode
        if sock is not None:
            sock.close()
            self._sock = None
        for arena in (self._arena_in, self._arena_out):
            if arena is not None:
                arena.close()
        self._arena_in = self._arena_out = None
