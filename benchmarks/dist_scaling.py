"""How torch.distributed inference scales with the number of ranks: 1, 2 and 3 gloo ranks
(by default) in one run, on the `small` sizes.

  replicas  `servelab dist replicas --nproc N`: every rank a whole ranker, closed loop at
            --batch-size; each job first runs rank 0 alone, then all N ranks, so the scaling
            efficiency (N ranks' samples/s over N x one rank's) comes from one job. Latency
            histograms are per rank and merged exactly.
  shard     the ranker with its tables spread over N ranks (all_to_all), driven through
            DistRunner like any runner: samples/s, bytes moved per query and the share of
            the coordinator's batch time spent inside collectives.
  tensor    the encoder, Megatron tensor parallel over N ranks (all_reduce twice a layer):
            the same figures.
  loadgen   (--loadgen) `servelab dist loadgen`: N Poisson generators against one
            `servelab serve` on 127.0.0.1, offered far above what it serves: the issue rate
            each N achieves (how load generation scales past one Python process).

Every shard and tensor job's outputs are checked against the single-process fp32 reference
(exit 1 on a failure). On a CPU these figures are about the mechanism, not speed: gloo
ranks share the machine's cores (2 here, shared with other work), so adding ranks adds
contention and a collective is a memory copy through the kernel. On GPUs with NCCL
(unverified: no GPU was at hand) the same script measures the real thing.

    .venv/bin/python benchmarks/dist_scaling.py [--ranks 1,2,3] [--duration-s 2] [--loadgen]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.check import Checker  # noqa: E402
from lab.dist.runner import DistRunner  # noqa: E402
from lab.export import ensure_exported  # noqa: E402
from lab.repository import ModelRepository  # noqa: E402
from lab.workload import Workload  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def servelab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args], cwd=ROOT, env=ENV, capture_output=True, text=True
    )


def replicas(ranks: list[int], duration_s: float, batch: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in ranks:
            out = Path(tmp) / f"replicas-{n}.json"
            done = servelab(
                "dist", "replicas", "--model", "ranker", "--size", "small", "--nproc", str(n),
                "--duration-s", f"{duration_s:g}", "--batch-size", str(batch),
                "--output", str(out), *(["--no-baseline"] if n == 1 else []),
            )  # fmt: skip
            if done.returncode:
                raise SystemExit(f"replicas with {n} ranks failed:\n{done.stderr[-3000:]}")
            result = json.loads(out.read_text())
            phases = result["phases"]
            rows.append(
                {
                    "ranks": n,
                    "one_sps": phases.get("one", phases["all"])["throughput_sps"],
                    "all_sps": phases["all"]["throughput_sps"],
                    "efficiency": result.get("scaling_efficiency", 1.0),
                    "p99_ms": phases["all"]["latency_ms"]["p99"],
                }
            )
    return rows


def sharded(
    mode: str, model: str, ranks: list[int], batch: int, batches: int
) -> list[dict[str, Any]]:
    handle = ModelRepository(ROOT / "models").handle(model, "small")
    ensure_exported(handle)
    workload = Workload(handle, seed=7)
    samples = workload.samples(batch * 4)
    inputs = [workload.collate(samples[i : i + batch]) for i in range(0, len(samples), batch)]
    expected = workload.reference(samples[:batch], threads=1)
    checker = Checker.for_model(handle)
    rows = []
    for n in ranks:
        with DistRunner(mode=mode, nproc=n, timeout_s=120, echo=False) as runner:
            runner.load(handle)
            check = checker.check(runner.infer(inputs[0]), expected)
            for b in inputs[1:]:  # warm-up
                runner.infer(b)
            before = runner.accounting()["ranks"][0]
            start = time.perf_counter_ns()
            for i in range(batches):
                runner.infer(inputs[i % len(inputs)])
            wall_ns = time.perf_counter_ns() - start
            after = runner.accounting()
            coord = after["ranks"][0]
            moved = (coord["bytes_sent"] + coord["bytes_received"]) - (
                before["bytes_sent"] + before["bytes_received"]
            )
            comm_ns = coord["collective_ns"] - before["collective_ns"]
            rows.append(
                {
                    "ranks": n,
                    "passed": bool(check.passed),
                    "failure": None if check.passed else check.failures[0],
                    "sps": batches * batch / (wall_ns / 1e9),
                    "bytes_per_query": moved / (batches * batch),
                    "comm_share": comm_ns / wall_ns,
                    "max_param_mb": max(r["param_bytes"] for r in after["ranks"]) / 1e6,
                }
            )
    return rows


def loadgen(ranks: list[int], duration_s: float, rate_qps: float) -> list[dict[str, Any]]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab",
            "serve",
            "--model",
            "ranker",
            "--size",
            "small",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ],  # fmt: skip
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    rows = []
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r"http=[\d.]+:(\d+)", line)
        if not match:
            raise SystemExit(f"server did not start: {line}")
        url = f"http://127.0.0.1:{match.group(1)}"
        with tempfile.TemporaryDirectory() as tmp:
            for n in ranks:
                out = Path(tmp) / f"load-{n}.json"
                done = servelab(
                    "dist", "loadgen", "--target", url, "--model", "ranker", "--size", "small",
                    "--nproc", str(n), "--duration-s", f"{duration_s:g}",
                    "--rate-qps", f"{rate_qps:g}", "--no-baseline", "--output", str(out),
                )  # fmt: skip
                if not out.is_file():
                    raise SystemExit(f"loadgen with {n} ranks failed:\n{done.stderr[-3000:]}")
                phase = json.loads(out.read_text())["phases"]["all"]
                rows.append(
                    {
                        "ranks": n,
                        "issue_rate_qps": phase["issue_rate_qps"],
                        "completed_qps": phase["throughput_sps"],
                        "failed": sum(r["failed"] for r in phase["ranks"]),
                        "p99_ms": phase["latency_ms"]["p99"],
                        "lag_ms": phase["issue_lag_p99_ms"],
                    }
                )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ranks", default="1,2,3")
    p.add_argument("--duration-s", type=float, default=2.0)
    p.add_argument(
        "--loadgen", action="store_true", help="also measure rank-parallel load generation"
    )
    p.add_argument("--rate-qps", type=float, default=4000.0, help="offered load for --loadgen")
    args = p.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    print("gloo on CPU: these figures show the mechanism (what moves, how often), not speed;")
    print(f"the ranks share this machine's {os.cpu_count()} cores.\n")

    print(
        "replicas (ranker small, closed loop, batch 64): efficiency = N ranks / (N x rank 0 alone)"
    )
    print(f"{'ranks':>5} {'1 rank sps':>11} {'N ranks sps':>12} {'efficiency':>10} {'p99 ms':>8}")
    for r in replicas(ranks, args.duration_s, 64):
        print(
            f"{r['ranks']:>5} {r['one_sps']:>11.0f} {r['all_sps']:>12.0f} "
            f"{r['efficiency']:>10.2f} {r['p99_ms']:>8.2f}"
        )
    failed = []
    for mode, model, batch, batches in (("shard", "ranker", 256, 20), ("tensor", "encoder", 8, 10)):
        print(
            f"\n{mode} ({model} small, batch {batch}): communication share = time in collectives / batch time"
        )
        print(
            f"{'ranks':>5} {'samples/s':>10} {'bytes/query':>12} {'comm share':>10} {'max MB/rank':>11} check"
        )
        for r in sharded(mode, model, ranks, batch, batches):
            print(
                f"{r['ranks']:>5} {r['sps']:>10.0f} {r['bytes_per_query']:>12.0f} "
                f"{r['comm_share']:>10.2f} {r['max_param_mb']:>11.1f} "
                f"{'pass' if r['passed'] else 'FAIL: ' + str(r['failure'])}"
            )
            if not r["passed"]:
                failed.append(f"{mode} with {r['ranks']} ranks")
    if args.loadgen:
        print(
            f"\nloadgen (N Poisson generators at {args.rate_qps:g}/N qps each against one server)"
        )
        print("issued = actually sent on one of the rank's connections; lag = send - schedule")
        print(
            f"{'ranks':>5} {'issued/s':>9} {'answered/s':>10} {'failed':>6} {'p99 ms':>8} "
            f"{'lag p99 ms':>10}"
        )
        for r in loadgen(ranks, args.duration_s, args.rate_qps):
            print(
                f"{r['ranks']:>5} {r['issue_rate_qps']:>9.0f} {r['completed_qps']:>10.0f} "
                f"{r['failed']:>6} {r['p99_ms']:>8.1f} {r['lag_ms']:>10.1f}"
            )
    if failed:
        print(f"\nFAILED the reference check: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
