"""`DistRunner`: a torch.distributed job behind the ordinary Runner contract.

`load()` starts the job with torchrun (the command line is printed), waits for the ranks on
this node to connect and for the coordinator to report every rank loaded; `infer()` ships a
batch to the coordinator through the isolation wire (shared-memory arenas and fixed binary
messages, nothing unpickled), so the harness drives a job exactly as it drives a runner in
its worker process: every scenario, audit and report works unchanged.

Failure, never a silent hang: each rank on this node keeps a socket open to the harness, so
a rank that dies is named at once (its pid and rank); a rank that hangs leaves its peers
waiting in a collective until `timeout_s`, when the coordinator's error comes back, and the
per-rank progress counters in shared memory name the ranks that fell behind. The harness's
own wait is bounded too (timeout_s plus a margin). Either way the whole job is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, ClassVar, NoReturn

import numpy as np

from lab.dist import MODE_MODELS, MODES
from lab.dist.comm import FIELD, MAX_RANKS, SLOT_FIELDS, STATS_BYTES
from lab.dist.launch import BACKENDS, DEFAULT_TIMEOUT_S, LaunchSpec, torchrun_command
from lab.errors import ConfigError, RunnerError, WorkerLost
from lab.isolation import wire
from lab.isolation.runner import (
    LOAD_ERRORS,
    POLL_S,
    IsolatedRunner,
    _how_it_ended,
    _stdout_target,
    worker_environment,
)
from lab.repository import ModelHandle

MARGIN_S = 5.0  # the harness waits this much past the ranks' own timeout
STOP_GRACE_S = 10.0


class DistRunner(IsolatedRunner):
    """Options: mode (replicas | shard | tensor), nproc (ranks on this node), nnodes,
    rdzv_endpoint, rdzv_id, timeout_s (every collective; a dead or hung rank fails the job
    within it), backend (auto | gloo | nccl), threads (per rank; 0: 1 on a CPU, cores / nproc with CUDA)."""

    name: ClassVar[str] = "dist"

    def __init__(
        self,
        mode: str = "replicas",
        nproc: int = 2,
        nnodes: int = 1,
        rdzv_endpoint: str = "",
        rdzv_id: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backend: str = "auto",
        threads: int = 0,
        load_timeout_s: float = 300.0,
        echo: bool = True,
    ) -> None:
        options = {
            "mode": mode,
            "nproc": int(nproc),
            "nnodes": int(nnodes),
            "rdzv_endpoint": rdzv_endpoint,
            "rdzv_id": rdzv_id,
            "timeout_s": float(timeout_s),
            "backend": backend,
            "threads": int(threads),
        }
        super().__init__(
            f"dist:{mode}",
            options,
            load_timeout_s=load_timeout_s,
            infer_timeout_s=float(timeout_s) + MARGIN_S,
        )
        if mode not in MODES:
            raise ConfigError(f"unknown dist mode {mode!r}: choose from {', '.join(MODES)}")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
        if not float(timeout_s) > 0:
            raise ConfigError("the dist timeout must be positive")
        self.launch = LaunchSpec(int(nproc), int(nnodes), rdzv_endpoint, rdzv_id)
        self.launch.check()
        self.echo = echo
        self.command: list[str] = []
        self.ranks: dict[int, dict[str, Any]] = {}  # rank -> hello (pid, host, local rank)
        self.rank_status: list[dict[str, Any]] = []
        self.ready: dict[str, Any] = {}
        self.coordinator = -1
        self._conns: dict[int, socket.socket] = {}  # rank -> its liveness socket
        self._by_fd: dict[int, int] = {}
        self._watch = select.poll()
        self._arena_stats: wire.Arena | None = None
        self._slots: np.ndarray | None = None
        self._listener: socket.socket | None = None
        self._tmp: str | None = None

    # ----- load: launch, handshake -----------------------------------------------------------
    def load_impl(self, model: ModelHandle) -> None:
        mode = str(self.options["mode"])
        wanted = MODE_MODELS.get(mode)
        if wanted is not None and model.name != wanted:
            raise ConfigError(f"dist mode {mode} is written for the {wanted}, not {model.name}")
        from lab.weights import ensure_weights

        ensure_weights(model)  # once, here: ranks only read the file
        self._open_wire(model, "servelab-dist")
        self._arena_stats = wire.Arena.create("servelab-dist-stats", STATS_BYTES)
        assert self._arena_stats.map is not None
        self._slots = np.ndarray(
            (MAX_RANKS, len(SLOT_FIELDS)), np.int64, buffer=self._arena_stats.map
        )
        self._tmp = tempfile.mkdtemp(prefix="servelab-dist-")
        path = os.path.join(self._tmp, "harness.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(path)
        self._listener.listen(max(8, self.launch.nproc_per_node))
        rank_args = [
            "--mode", mode,
            "--model", model.name,
            "--size", model.size,
            "--precision", model.precision,
            "--model-repository", str(model.directory.parent),
            "--timeout-s", f"{float(self.options['timeout_s']):g}",
            "--backend", str(self.options["backend"]),
            "--threads", str(self.options["threads"]),
            "--connect", path,
        ]  # fmt: skip
        self.command = torchrun_command(self.launch, "lab.dist.rank", rank_args)
        if self.echo:
            print(f"servelab: launching: {shlex.join(self.command)}", file=sys.stderr)
        started = time.perf_counter()
        try:
            self.process = subprocess.Popen(
                self.command,
                env=rank_environment(),
                stdin=subprocess.DEVNULL,
                stdout=_stdout_target(),
                start_new_session=True,
            )
            self._handshake(model, time.monotonic() + self.load_timeout_s)
        except BaseException:
            self._stop(kill=True)
            raise
        self.load_s = time.perf_counter() - started
        self._ready_at = time.perf_counter()
        self._cpu_at_ready = self._cpu_last = self._worker_cpu_s()

    def _handshake(self, model: ModelHandle, deadline: float) -> None:
        assert self._listener is not None and self.process is not None
        self._watch.register(self._listener, select.POLLIN)
        while True:
            events = self._watch.poll(int(POLL_S * 1000))
            for fd, _ in events:
                if fd == self._listener.fileno():
                    self._accept()
                    continue
                rank = self._by_fd[fd]
                message = b""
                with contextlib.suppress(OSError):
                    message = self._conns[rank].recv(wire.MAX_MESSAGE)
                if not message:
                    raise WorkerLost(f"{self._rank_name(rank)} died while loading {model.name}")
                self._on_ready(rank, message)
                return
            if self.process.poll() is not None:
                raise RunnerError(
                    f"torchrun {_how_it_ended(self.process.returncode)} while loading "
                    f"{model.name} (its output is above)"
                )
            if time.monotonic() >= deadline:
                raise RunnerError(
                    f"the dist job did not load {model.name} within {self.load_timeout_s:g} s "
                    f"({len(self.ranks)} of {self.launch.nproc_per_node} local ranks connected)"
                )

    def _accept(self) -> None:
        assert self._listener is not None and self._arena_in is not None
        assert self._arena_out is not None and self._arena_stats is not None
        conn, _ = self._listener.accept()
        try:
            hello = json.loads(conn.recv(4096))
            rank = int(hello["rank"])
            pid = int(hello["pid"])
        except (ValueError, KeyError, TypeError, OSError):
            conn.close()
            raise RunnerError("a dist rank sent an unreadable hello") from None
        socket.send_fds(conn, [b"F"], [self._arena_in.fd, self._arena_out.fd, self._arena_stats.fd])
        self.ranks[rank] = {
            "pid": pid,
            "local_rank": hello.get("local_rank"),
            "host": str(hello.get("host", ""))[:200],
        }
        self._conns[rank] = conn
        self._by_fd[conn.fileno()] = rank
        self._watch.register(conn, select.POLLIN)

    def _on_ready(self, rank: int, message: bytes) -> None:
        try:
            info = json.loads(message)
        except ValueError:
            info = {"ok": False, "error": "the coordinating rank sent an unreadable reply"}
        if not isinstance(info, dict) or not info.get("ok"):
            error = str(info.get("error", "unknown error")) if isinstance(info, dict) else ""
            kind = LOAD_ERRORS.get(str(info.get("kind")) if isinstance(info, dict) else "")
            raise (kind or RunnerError)(error[: wire.MAX_ERROR_CHARS])
        self.ready = info
        self.coordinator = rank
        self.rank_status = list(info.get("ranks", []))
        self.reported = dict(info.get("describe", {}))
        self.runner_name = f"dist-{self.options['mode']}"
        self._sock = self._conns[rank]
        self._receiver = wire.Receiver(self._sock)
        self._poller = select.poll()
        self._poller.register(self._sock, select.POLLIN)
        assert self._listener is not None
        self._watch.unregister(self._listener)

    def _worker_cpu_s(self) -> float:
        """CPU seconds of torchrun and the ranks on this node (kernel accounting)."""
        if self.process is None:
            return 0.0
        total = 0.0
        try:
            import psutil
        except ImportError:
            return self._cpu_last
        pids = [self.process.pid, *(int(info["pid"]) for info in self.ranks.values())]
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += float(times.user + times.system)
        return max(total, self._cpu_last)

    # ----- failures ------------------------------------------------------------------------------
    def _rank_name(self, rank: int) -> str:
        hello = self.ranks.get(rank, {})
        world = self.ready.get("world_size", "?")
        return (
            f"rank {rank} of {world} (local rank {hello.get('local_rank')}, pid {hello.get('pid')})"
        )

    def _dead_ranks(self, timeout_ms: int = 0) -> list[int]:
        """Ranks on this node whose socket closed (a rank never writes after its hello)."""
        return sorted({self._by_fd[fd] for fd, _ in self._watch.poll(timeout_ms)})

    def _behind(self) -> list[int]:
        """Ranks that never started the command the coordinator is stuck in (hung ranks)."""
        if self._slots is None or self.coordinator < 0:
            return []
        started = self._slots[:, FIELD["started"]]
        at = int(started[self.coordinator])
        if int(self._slots[self.coordinator, FIELD["finished"]]) >= at:
            return []
        return [r for r in sorted(self.ranks) if r != self.coordinator and int(started[r]) < at]

    def _fail(self, what: str, doing: str) -> NoReturn:
        """Stop the job, naming the rank that caused it: a hung rank (behind the
        coordinator) first, else a rank that died; ranks that exited because their own
        collective failed are consequences, listed after."""
        behind = self._behind()
        # A killed rank's sockets close as it exits: give the kernel a moment to show it.
        dead = self._dead_ranks(200 if behind else 0)
        assert self._slots is not None
        at = int(self._slots[self.coordinator, FIELD["started"]]) if self.coordinator >= 0 else 0
        causes = [f"{self._rank_name(r)} died" for r in dead if r in behind or not behind]
        causes += [
            f"{self._rank_name(r)} hung (it never started command {at}, where the "
            f"coordinator waits)"
            for r in behind
            if r not in dead
        ]
        after = [r for r in dead if behind and r not in behind]
        if after:
            causes.append("then " + ", ".join(f"rank {r}" for r in after) + " exited")
        cause = "; ".join(causes) or "the job stopped answering"
        self._lose(f"dist job failed: {cause}" + (f" ({what})" if what else ""), doing)

    # ----- the hot path ------------------------------------------------------------------------
    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.lost is None and self._dead_ranks():
            self._fail("", "waiting for a batch")
        return super().infer_impl(inputs)

    def _receive(self, timeout_s: float, doing: str, batch: int = 0) -> bytes:
        assert self._sock is not None and self.process is not None
        sent = time.perf_counter()
        if not self._wait_briefly(batch):
            deadline = time.monotonic() + timeout_s
            while not self._poller.poll(int(POLL_S * 1000)):
                if self._dead_ranks():
                    self._fail("", doing)
                if self.process.poll() is not None:
                    self._fail(f"torchrun {_how_it_ended(self.process.returncode)}", doing)
                if time.monotonic() >= deadline:
                    self._fail(f"no answer within {timeout_s:g} s", doing)
        if batch:
            self._answered(batch, time.perf_counter() - sent)
        message = b""
        with contextlib.suppress(OSError):
            message = self._receiver.recv()
        if not message:
            self._fail(f"{self._rank_name(self.coordinator)} (the coordinator) is gone", doing)
        if message[:1] == wire.OP_ERROR:
            text = message[wire.ERROR_HEAD.size :].decode(errors="replace")
            if "CollectiveError" in text or self._dead_ranks():
                self._fail(text[: wire.MAX_ERROR_CHARS], doing)
        return message

    # ----- accounting ----------------------------------------------------------------------------
    def accounting(self) -> dict[str, Any]:
        """Communication per query (the coordinator's, which also moves the batch in and out)
        and every local rank's totals and memory."""
        ranks: list[dict[str, Any]] = []
        coordinator: dict[str, int] = {}
        if self._slots is not None:
            for status in self.rank_status:
                rank = int(status["rank"])
                row = {name: int(self._slots[rank, i]) for i, name in enumerate(SLOT_FIELDS)}
                if rank in self.ranks:
                    status = {**status, **row}
                if rank == self.coordinator:
                    coordinator = row
                ranks.append(status)
        samples = coordinator.get("samples", 0)
        moved = coordinator.get("bytes_sent", 0) + coordinator.get("bytes_received", 0)
        return {
            "mode": self.options["mode"],
            "world_size": self.ready.get("world_size"),
            "backend": self.ready.get("backend"),
            "device": self.ready.get("device"),
            # gloo: tested; nccl: ran with one rank on one GPU only (several GPUs: not yet)
            "verified": self.ready.get("backend") == "gloo"
            or (self.ready.get("backend") == "nccl" and self.ready.get("world_size") == 1),
            "command": self.command,
            "coordinator": self.coordinator,
            "batches": coordinator.get("batches", 0),
            "samples": samples,
            "bytes_per_query": moved / samples if samples else None,
            "collective_ms_per_query": (
                coordinator.get("collective_ns", 0) / 1e6 / samples if samples else None
            ),
            "collectives_per_batch": (
                coordinator.get("collectives", 0) / coordinator["batches"]
                if coordinator.get("batches")
                else None
            ),
            "ranks": ranks,
        }

    def usage(self) -> dict[str, Any]:
        return {**super().usage(), "dist": self.accounting()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dist": self.accounting()}

    # ----- stopping ------------------------------------------------------------------------------
    def _stop(self, kill: bool = False) -> None:
        process, sock = self.process, self._sock
        if kill:  # ranks run in sessions of their own, and a stopped one ignores SIGTERM
            for info in self.ranks.values():
                with contextlib.suppress(OSError):
                    os.kill(int(info["pid"]), signal.SIGKILL)
        if process is not None and process.poll() is None:
            if not kill and sock is not None:
                self._cpu_last = self._worker_cpu_s()
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    sock.send(wire.OP_CLOSE)
                    process.wait(timeout=STOP_GRACE_S)
            if process.poll() is None and not kill:  # torchrun stops its ranks on SIGTERM
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=STOP_GRACE_S)
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process is not None:
            self.returncode = process.returncode
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._by_fd.clear()
        self._watch = select.poll()
        self._sock = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._slots = None
        for arena in (self._arena_in, self._arena_out, self._arena_stats):
            if arena is not None:
                arena.close()
        self._arena_in = self._arena_out = self._arena_stats = None


def rank_environment() -> dict[str, str]:
    """The harness's environment without the secret seed; OMP_NUM_THREADS=1 unless set (what
    torchrun would set, without its banner); each rank then sets its torch threads."""
    env = worker_environment()
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
