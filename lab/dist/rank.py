"""What every rank of a job runs: `python -m lab.dist.rank --mode MODE --model NAME ...`,
started by torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous).

1. Ranks on the harness's node connect to its socket (`--connect PATH`), say who they are
   (rank, pid) and receive the shared-memory arenas (inputs, outputs, per-rank accounting).
   A rank that dies closes its socket, so the harness knows at once which one it was.
2. `init_process_group` (nccl with CUDA, gloo otherwise) with `--timeout-s`: a collective
   that waits longer for a peer fails, naming the operation and this rank.
3. The lowest rank connected to the harness coordinates (rank 0 on a single node); every
   rank opens the model from its name (a plain reference, never a live object) and loads
   its part; the coordinator reports every rank's load status and memory to the harness.
4. The coordinator answers the harness's batches with the isolation wire protocol
   (lab/isolation/wire.py) and drives the others through the engine's commands.
5. `destroy_process_group` on every way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import sys
from datetime import timedelta

import numpy as np

from lab.dist.comm import MAX_RANKS, SLOT_FIELDS, CollectiveError, Comm
from lab.dist.engines import ENGINES, Engine
from lab.dist.launch import DEFAULT_TIMEOUT_S, choose_backend, default_threads, rank_device
from lab.errors import LabError
from lab.isolation import wire
from lab.isolation.worker import _die_with_parent, _serve
from lab.repository import ModelHandle, ModelRepository

COMMAND_TIMEOUT = timedelta(days=7)  # waiting for the next batch is not a failure


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.dist.rank")
    p.add_argument("--mode", choices=sorted(ENGINES), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--size", default=None)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--model-repository", default=None)
    p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--connect", default="", help="the harness's socket (its node only)")
    return p.parse_args(argv)


class Coordinator:
    """What lab.isolation.worker._serve needs of a runner: the model and infer_impl."""

    name = "dist"

    def __init__(self, engine: Engine, handle: ModelHandle) -> None:
        self.engine = engine
        self.model = handle

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine.run(inputs)


def connect(path: str, rank: int, local_rank: int) -> tuple[socket.socket, list[int]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    hello = {
        "rank": rank,
        "local_rank": local_rank,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    sock.send(json.dumps(hello).encode())
    _, fds, _, _ = socket.recv_fds(sock, 16, 3)
    if len(fds) != 3:
        raise LabError("the harness did not send the shared-memory arenas")
    return sock, list(fds)


def memory(engine: Engine, device: str) -> dict[str, int]:
    used = {
        "param_bytes": engine.param_bytes,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if device.startswith("cuda"):  # ran with one rank on one GPU
        import torch

        used["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated(device))
    return used


def main(argv: list[str]) -> int:
    args = parse(argv)
    _die_with_parent()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    sock: socket.socket | None = None
    slots: np.ndarray | None = None
    arenas: list[wire.Arena] = []
    if args.connect and os.path.exists(args.connect):
        sock, fds = connect(args.connect, rank, local_rank)
        arenas = [wire.Arena(fd) for fd in fds]
        assert arenas[2].map is not None
        slots = np.ndarray((MAX_RANKS, len(SLOT_FIELDS)), np.int64, buffer=arenas[2].map)

    import torch
    import torch.distributed as dist

    backend = choose_backend(args.backend)
    device = rank_device(backend)
    if device.startswith("cuda"):  # ran with one rank on one GPU
        torch.cuda.set_device(local_rank)
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference has no TF32
        torch.backends.cudnn.allow_tf32 = False
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = args.threads or default_threads(device, local_world)
    torch.set_num_threads(threads)
    dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout_s))
    try:
        comm = Comm(rank, world, device, slots, args.timeout_s)
        command_group = dist.new_group(timeout=COMMAND_TIMEOUT)
        flag = torch.tensor([rank if sock is not None else world], device=device)
        comm._count("coordinator election", 0, 0, lambda: dist.all_reduce(flag, dist.ReduceOp.MIN))
        coordinator = int(flag.item())
        handle = ModelRepository(args.model_repository).handle(
            args.model, args.size, args.precision
        )
        engine = ENGINES[args.mode](handle, comm, device, coordinator, command_group)
        error: tuple[str, str] | None = None
        try:
            engine.load()
        except LabError as exc:
            error = (type(exc).__name__, str(exc))
        except Exception as exc:
            error = ("RunnerError", f"{type(exc).__name__}: {exc}")
        status = comm.all_gather_object(
            {
                "rank": rank,
                "local_rank": local_rank,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "ok": error is None,
                "kind": error[0] if error else None,
                "error": error[1] if error else None,
                "threads": threads,
                **memory(engine, device),
            }
        )
        failed = [s for s in status if not s["ok"]]
        if coordinator == world:
            print(f"servelab dist: rank {rank}: no rank reached the harness", file=sys.stderr)
            return 2
        if rank != coordinator:
            if failed:
                return 2
            engine.follow()
            return 0
        assert sock is not None
        if failed:
            first = failed[0]
            message = f"rank {first['rank']} failed to load {args.mode}: {first['error']}"
            sock.send(json.dumps({"ok": False, "kind": first["kind"], "error": message}).encode())
            return 2
        ready = {
            "ok": True,
            "name": "dist",
            "coordinator": rank,
            "world_size": world,
            "backend": backend,
            "device": device,
            "mode": args.mode,
            "ranks": status,
            "describe": {"name": "dist", "class": "lab.dist.rank.Coordinator", "mode": args.mode},
        }
        sock.send(json.dumps(ready, default=str).encode()[: wire.MAX_MESSAGE])
        # The harness going away ends the loop too: stop the others all the same.
        with contextlib.suppress(ConnectionError, OSError):
            _serve(sock, Coordinator(engine, handle), arenas[0], arenas[1])
        engine.stop()
        return 0
    except CollectiveError as exc:
        print(f"servelab dist: {exc}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
