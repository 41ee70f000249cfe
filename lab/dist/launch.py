"""The torchrun command line, the backend and the device of a rank.

Single node: `--nnodes 1 --nproc-per-node N` with a c10d rendezvous on 127.0.0.1 and a free
port. Multi-node: every node runs the same line with `--nnodes M --rdzv-endpoint HOST:PORT`
(the c10d store lives on HOST) and the same `--rdzv-id`. `--max-restarts 0`: a rank that
dies ends the job (inference restarts are the caller's decision, not torchrun's).
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from dataclasses import dataclass

from lab.errors import BackendUnavailable, ConfigError

BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RDZV_PORT = 29400


@dataclass(frozen=True)
class LaunchSpec:
    nproc_per_node: int = 2
    nnodes: int = 1
    rdzv_endpoint: str = ""  # HOST:PORT; empty on one node: 127.0.0.1 and a free port
    rdzv_id: str = ""  # the same on every node of a job; empty: a fresh one

    def check(self) -> None:
        if self.nproc_per_node < 1:
            raise ConfigError(f"--nproc must be at least 1, got {self.nproc_per_node}")
        if self.nnodes < 1:
            raise ConfigError(f"--nnodes must be at least 1, got {self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError(
                "a multi-node job needs --rdzv-endpoint HOST:PORT (the same on every node)"
            )
        if self.rdzv_endpoint:
            host, sep, port = self.rdzv_endpoint.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(
                    f"--rdzv-endpoint {self.rdzv_endpoint!r} must look like HOST:PORT"
                )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_command(spec: LaunchSpec, module: str, args: list[str]) -> list[str]:
    """`python -m torch.distributed.run ...` (what the `torchrun` script runs) for `module`."""
    spec.check()
    endpoint = spec.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    if spec.nnodes > 1 and not spec.rdzv_id:
        raise ConfigError("a multi-node job needs --rdzv-id, the same on every node")
    rdzv_id = spec.rdzv_id or f"servelab-{uuid.uuid4().hex[:12]}"
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(spec.nnodes),
        "--nproc-per-node",
        str(spec.nproc_per_node),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        rdzv_id,
        "--max-restarts",
        "0",
        "--monitor-interval",
        "0.2",
        "-m",
        module,
        *args,
    ]


def choose_backend(requested: str = "auto") -> str:
    """nccl when CUDA is present (auto), gloo otherwise."""
    if requested not in BACKENDS:
        raise ConfigError(f"unknown backend {requested!r}: choose from {', '.join(BACKENDS)}")
    import torch

    cuda = torch.cuda.is_available()
    if requested == "nccl" and not cuda:
        raise BackendUnavailable("backend nccl asked for, but torch sees no CUDA GPU")
    if requested == "auto":
        return "nccl" if cuda else "gloo"
    return requested


def rank_device(backend: str) -> str:
    """cuda:LOCAL_RANK under nccl (ran on one GPU), cpu under gloo."""
    if backend == "nccl":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def default_threads(device: str, local_world: int) -> int:
    """Torch threads per rank: 1 on a CPU (what torchrun's OMP_NUM_THREADS=1 means, and
    what keeps N ranks from oversubscribing the cores: compare N ranks x 1 thread with one
    rank x 1 thread), cores / ranks under CUDA, where the CPU only feeds the GPU."""
    if device.startswith("cuda"):
        return max(1, (os.cpu_count() or 1) // max(1, local_world))
    return 1
