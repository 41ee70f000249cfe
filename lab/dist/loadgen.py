"""Rank-parallel load: every rank drives its own target with its own stream and keeps its
own raw latencies; the coordinator collects them so the launcher merges exact per-rank
histograms (never averaged percentiles).

`python -m lab.dist.loadgen --target local|URL ...`, started by torchrun:

    local   `replicas` measured from the inside: every rank holds the whole model and serves
            its share of the load (its own samples, rate / N each, or closed loop)
    URL     a remote server (http:// or grpc://): N generator processes, each a Poisson
            stream at rate / N through `--concurrency` connections, so the issue rate is not
            capped by one Python process

With `--baseline` (the default) a first phase runs rank 0 alone at its share, then every
rank together: throughput and scaling efficiency come from the same job, same machine.
Latency is measured from each query's scheduled time (open loop) or per batch (closed
loop). Ranks write nothing but the coordinator's `--out` .npz (raw latencies per phase and
rank, and a JSON summary inside it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import numpy as np

from lab.dist.launch import DEFAULT_TIMEOUT_S, choose_backend, default_threads, rank_device
from lab.isolation.worker import _die_with_parent
from lab.repository import ModelRepository

WARMUP_CALLS = 3
POOL_SAMPLES = 256


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.dist.loadgen")
    p.add_argument("--target", default="local")
    p.add_argument("--model", required=True)
    p.add_argument("--size", default=None)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--model-repository", default=None)
    p.add_argument("--rate-qps", type=float, default=0.0, help="total; 0: closed loop")
    p.add_argument("--duration-s", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=1, help="closed loop batch")
    p.add_argument("--concurrency", type=int, default=8, help="connections per rank (remote)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--baseline", type=int, default=1, help="1: rank 0 alone first")
    p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


class LocalTarget:
    """The whole model in this rank (a replica)."""

    def __init__(self, handle: Any, device: str) -> None:
        import torch

        from lab.weights import load_module

        self.torch = torch
        self.device = torch.device(device)
        self.module = load_module(handle, generate_missing=False).to(self.device)
        self.names = [s.name for s in handle.inputs]

    def __call__(self, batch: dict[str, np.ndarray]) -> None:
        torch = self.torch
        tensors = [torch.from_numpy(batch[n]).to(self.device) for n in self.names]
        with torch.inference_mode():
            result = self.module(*tensors)
        first = result if isinstance(result, torch.Tensor) else result[0]
        first.cpu()  # waits for the device


class RemoteTarget:
    """One RemoteRunner (one connection) per thread."""

    def __init__(self, url: str, handle: Any) -> None:
        self.url = url
        self.handle = handle
        self.local = threading.local()
        self.runners: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, batch: dict[str, np.ndarray]) -> None:
        runner = getattr(self.local, "runner", None)
        if runner is None:
            from lab.runners.remote import RemoteRunner

            runner = RemoteRunner(url=self.url).load(self.handle)
            self.local.runner = runner
            with self.lock:
                self.runners.append(runner)
        runner.infer(batch)

    def close(self) -> None:
        for runner in self.runners:
            runner.close()


def closed_loop(
    target: Any, batches: list[dict[str, np.ndarray]], duration_s: float
) -> dict[str, Any]:
    latencies: list[int] = []
    samples = 0
    start = time.perf_counter_ns()
    end = start + int(duration_s * 1e9)
    i = 0
    now = start
    while now < end:
        batch = batches[i % len(batches)]
        target(batch)
        done = time.perf_counter_ns()
        latencies.append(done - now)
        samples += next(iter(batch.values())).shape[0]
        now = done
        i += 1
    wall_ns = now - start
    return {
        "latencies_ns": np.asarray(latencies, np.int64),
        "issued": i,
        "completed": i,
        "failed": 0,
        "samples": samples,
        "wall_s": wall_ns / 1e9,
    }


def open_loop(
    target: Any,
    queries: list[dict[str, np.ndarray]],
    rate_qps: float,
    duration_s: float,
    concurrency: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Poisson arrivals at `rate_qps`; latency from each query's scheduled time."""
    gaps = rng.exponential(1.0 / rate_qps, size=max(1, int(rate_qps * duration_s * 1.5) + 16))
    offsets_ns = (np.cumsum(gaps) * 1e9).astype(np.int64)
    offsets_ns = offsets_ns[offsets_ns < int(duration_s * 1e9)]
    latencies = np.full(offsets_ns.size, -1, np.int64)
    sent_ns = np.full(offsets_ns.size, -1, np.int64)  # when a connection actually sent it
    failures: list[str] = []

    def one(i: int, scheduled: int) -> None:
        sent_ns[i] = time.perf_counter_ns()
        try:
            target(queries[i % len(queries)])
        except Exception as exc:  # a failed query is recorded, never faked
            failures.append(f"{type(exc).__name__}: {exc}")
            return
        latencies[i] = time.perf_counter_ns() - scheduled

    start = time.perf_counter_ns()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for i, offset in enumerate(offsets_ns.tolist()):
            scheduled = start + offset
            wait = (scheduled - time.perf_counter_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
            pool.submit(one, i, scheduled)
    wall_ns = time.perf_counter_ns() - start
    done = latencies[latencies >= 0]
    lag_ns = np.maximum(sent_ns - (start + offsets_ns), 0)
    # Issued = actually sent on a connection (not merely queued here), over the span in
    # which the sends happened.
    last_sent = int(sent_ns.max()) - start if sent_ns.size else 0
    return {
        "latencies_ns": done,
        "issued": int(offsets_ns.size),
        "completed": int(done.size),
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        "samples": int(done.size),
        "wall_s": wall_ns / 1e9,
        "issue_s": max(last_sent, 1) / 1e9,
        "offered_qps": rate_qps,
        "issue_lag_p50_ms": float(np.percentile(lag_ns, 50) / 1e6) if lag_ns.size else 0.0,
        "issue_lag_p99_ms": float(np.percentile(lag_ns, 99) / 1e6) if lag_ns.size else 0.0,
    }


def main(argv: list[str]) -> int:
    args = parse(argv)
    _die_with_parent()
    import torch
    import torch.distributed as dist

    from lab.workload import Workload

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    backend = choose_backend(args.backend)
    device = rank_device(backend)
    if device.startswith("cuda"):  # ran with one rank on one GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.set_num_threads(args.threads or default_threads(device, local_world))
    dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout_s))
    try:
        # Phases last longer than a collective may wait: barriers use a patient group.
        patient = dist.new_group(
            backend="gloo", timeout=timedelta(seconds=args.timeout_s + 4 * args.duration_s + 60)
        )
        handle = ModelRepository(args.model_repository).handle(
            args.model, args.size, args.precision
        )
        remote = args.target != "local"
        target: Any = RemoteTarget(args.target, handle) if remote else LocalTarget(handle, device)
        workload = Workload(handle, seed=args.seed * 1009 + rank)  # each rank its own samples
        pool = workload.samples(POOL_SAMPLES)
        if args.rate_qps > 0:
            queries = [workload.collate([s]) for s in pool]
        else:
            b = max(1, args.batch_size)
            queries = [workload.collate(pool[i : i + b]) for i in range(0, len(pool) - b + 1, b)]
        for q in queries[:WARMUP_CALLS]:
            target(q)
        phases = (
            [("one", [0]), ("all", list(range(world)))]
            if args.baseline and world > 1
            else [("all", list(range(world)))]
        )
        results: dict[str, list[Any]] = {}
        for name, active in phases:
            dist.barrier(group=patient)
            result: dict[str, Any] | None = None
            if rank in active:
                if args.rate_qps > 0:
                    rng = np.random.default_rng([args.seed, rank, len(results)])
                    result = open_loop(
                        target,
                        queries,
                        args.rate_qps / len(active),
                        args.duration_s,
                        max(1, args.concurrency),
                        rng,
                    )
                else:
                    result = closed_loop(target, queries, args.duration_s)
                result["rank"] = rank
                result["host"] = socket.gethostname()
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, result, group=patient)
            results[name] = gathered
        if remote:
            target.close()
        if rank == 0:
            arrays: dict[str, np.ndarray] = {}
            summary: dict[str, Any] = {
                "world_size": world,
                "backend": backend,
                "target": args.target,
                "phases": {},
            }
            for name, gathered in results.items():
                rows = []
                for r, res in enumerate(gathered):
                    if res is None:
                        continue
                    arrays[f"{name}_{r}"] = res.pop("latencies_ns")
                    rows.append(res)
                summary["phases"][name] = rows
            arrays["summary"] = np.frombuffer(json.dumps(summary).encode(), np.uint8)
            tmp = f"{args.out}.tmp.npz"
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, args.out)
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
