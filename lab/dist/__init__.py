"""Multi-process inference with torch.distributed, launched by torchrun.

    launch.py   the torchrun command line (c10d rendezvous), backend and device choice
    comm.py     collectives with accounting (bytes moved, time spent) per rank
    engines.py  the modes: replicas (data parallel), shard (ranker tables, all_to_all),
                tensor (encoder, Megatron column/row parallel)
    rank.py     what each rank runs (`python -m lab.dist.rank`, started by torchrun)
    runner.py   DistRunner: the job behind the ordinary Runner contract, so the harness
                drives it like any other runner (inputs and outputs through the isolation
                wire's shared-memory arenas, to and from the coordinating rank)
    loadgen.py  rank-parallel load: every rank its own Poisson stream, raw latencies
                gathered for exact histogram merging
    cli.py      `servelab dist ...` and the `servelab bench --dist` flags (L4)

On a CPU every mode runs on gloo. NCCL with one rank on one GPU ran on an NVIDIA H200
(torch 2.11.0+cu130, NCCL 2.28.9; every mode VALID, 2026-11-30: benchmarks/gpu_check.py);
collectives between ranks on several GPUs, and several nodes, have not run yet.
"""

from __future__ import annotations

MODES = ("replicas", "shard", "tensor")
# Which model each sharded mode is written for (replicas serves any model).
MODE_MODELS = {"shard": "ranker", "tensor": "encoder"}
