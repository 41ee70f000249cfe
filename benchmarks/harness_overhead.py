"""The harness measuring itself: the real bench pipeline driving a no-op runner.

Everything a real run does happens here (query source with copies, dynamic batcher, runner
input/output validation, the issuing thread, future callbacks, histograms, and by default
the isolated runner worker: shared memory and a socket round trip per batch), except that
the runner returns zeros at once, so every figure is the harness's own cost. In one run:

- offline: all samples issued at once in batches of --batch-size; target >= 100,000 samples/s
- server: Poisson arrivals at --qps (default 10,500); targets: achieved >= 10,000 queries/s
  and the load generator's own scheduling lag (actual minus scheduled issue time) p99 < 1 ms

Prints the figures (and JSON with --json) and exits 1 when a target is missed.

    .venv/bin/python benchmarks/harness_overhead.py [--duration-s 3] [--qps 10500]
        [--isolation process|none]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lab.bench.config import BenchConfig
from lab.bench.run import run_bench
from lab.bench.selftest import SyntheticWorkload, synthetic_handle
from lab.isolation import ISOLATION_MODES, make_runner

NOOP_PLUGIN = "lab.bench.selftest:NoopRunner"  # loaded like any plugin, in the worker

OFFLINE_TARGET_SAMPLES_PER_S = 100_000
SERVER_TARGET_QPS = 10_000
ISSUE_LAG_P99_TARGET_MS = 1.0


def measure(handle: Any, args: argparse.Namespace, scenario: str, duration_s: float) -> Any:
    config = BenchConfig.of(
        model="synthetic",
        runner="noop",
        scenarios=[scenario],
        qps=args.qps,
        duration_s=duration_s,
        min_queries=1000,
        warmup_queries=200,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=0,
        preferred_batch_sizes=[],
        batch_size=args.batch_size,
        audit=False,
        replay_check=False,
        roofline=False,
        stability_tolerance=0.25,
    )
    runner = make_runner(NOOP_PLUGIN, isolation=args.isolation)
    report = run_bench(config, handle=handle, workload=SyntheticWorkload(), runner=runner)
    return report["scenarios"][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=3.0, help="server duration")
    parser.add_argument(
        "--offline-duration-s",
        type=float,
        default=0.5,
        help="offline duration (at >1M samples/s every second means another million samples)",
    )
    parser.add_argument("--qps", type=float, default=10_500.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument(
        "--isolation",
        default="process",
        choices=ISOLATION_MODES,
        help="the no-op runner in its worker process (default, as plugins run) or in-process",
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)

    handle = synthetic_handle(max_batch_size=args.max_batch_size, slo_ms=50.0)
    offline = measure(handle, args, "offline", args.offline_duration_s)
    server = measure(handle, args, "server", args.duration_s)
    figures = {
        "offline_samples_per_s": offline["throughput"]["samples_per_s"],
        "offline_batch_size": args.batch_size,
        "server_target_qps": server["target_qps"],
        "server_achieved_qps": server["throughput"]["queries_per_s"],
        "server_queries": server["queries"],
        "server_issue_lag_p50_ms": server["issue_lag"]["p50_ms"],
        "server_issue_lag_p99_ms": server["issue_lag"]["p99_ms"],
        "server_issue_lag_max_ms": server["issue_lag"]["max_ms"],
        "server_latency_p99_ms": server["latency"]["percentiles"]["p99"]["ms"],
        "server_mean_batch": server["batch_size"]["mean"],
        "other_processes_cpu_cores": server["telemetry"]["other_processes_cpu_cores_mean"],
    }
    checks = [
        (
            "offline samples/s",
            figures["offline_samples_per_s"],
            f">= {OFFLINE_TARGET_SAMPLES_PER_S:,}",
            figures["offline_samples_per_s"] >= OFFLINE_TARGET_SAMPLES_PER_S,
        ),
        (
            "server achieved queries/s",
            figures["server_achieved_qps"],
            f">= {SERVER_TARGET_QPS:,}",
            figures["server_achieved_qps"] >= SERVER_TARGET_QPS,
        ),
        (
            "server issue lag p99 (ms)",
            figures["server_issue_lag_p99_ms"],
            f"< {ISSUE_LAG_P99_TARGET_MS}",
            figures["server_issue_lag_p99_ms"] < ISSUE_LAG_P99_TARGET_MS,
        ),
    ]
    print(
        f"harness overhead with a no-op runner, isolation {args.isolation} (offline "
        f"{args.offline_duration_s:g} s, server {args.duration_s:g} s)"
    )
    for name, value, target, ok in checks:
        print(f"  {name:28s} {value:14,.3f}   target {target:>10s}   {'ok' if ok else 'MISSED'}")
    print(
        f"  (server: {figures['server_queries']:,} queries at {args.qps:,.0f} qps target, "
        f"issue lag p50 {figures['server_issue_lag_p50_ms']:.4f} ms, max "
        f"{figures['server_issue_lag_max_ms']:.3f} ms; latency p99 "
        f"{figures['server_latency_p99_ms']:.3f} ms; mean batch {figures['server_mean_batch']:.1f})"
    )
    others = figures["other_processes_cpu_cores"]
    if others is not None and others > 0.25:
        print(f"  note: other processes used {others:.2f} CPU cores meanwhile: not a quiet machine")
    if args.json:
        print(json.dumps(figures, indent=1))
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
