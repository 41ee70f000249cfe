"""Cost of running a runner in its isolated worker process instead of in the harness's own.

The same runner (ONNX Runtime on the encoder, same options) is loaded twice, once behind the
worker (shared memory + a socket round trip per batch) and once in this process, and both
are called on the same inputs in interleaved blocks, so that machine noise hits both alike.
Per round: the difference of median per-call latencies at batch 1 and the ratio of
throughputs at batch 32; the figures are the medians over rounds. A no-op runner measured
the same way gives the transport's own cost, free of ONNX Runtime's session-to-session
variation.

Targets: <= 50 us added median latency per query at batch 1, >= 0.97x throughput at batch 32.
Exit 1 when a target is missed.

    .venv/bin/python benchmarks/isolation_overhead.py [--model encoder] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from lab.bench.selftest import synthetic_handle
from lab.export import ensure_exported
from lab.isolation import make_runner
from lab.repository import ModelHandle, ModelRepository
from lab.runners.base import Runner
from lab.workload import Workload

MAX_ADDED_US = 50.0
MIN_THROUGHPUT_RATIO = 0.97
Infer = Callable[[dict[str, np.ndarray]], object]


def _latencies_us(fn: Infer, inputs: dict[str, np.ndarray], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn(inputs)
        out.append((time.perf_counter_ns() - start) / 1e3)
    return out


def _pair(handle: ModelHandle, spec: str, options: dict[str, object]) -> dict[str, Runner]:
    return {
        "isolated": make_runner(spec, options).load(handle),
        "inprocess": make_runner(spec, options, isolation="none").load(handle),
    }


def added_latency_us(
    runners: dict[str, Runner], inputs: dict[str, np.ndarray], rounds: int, calls: int
) -> dict[str, float]:
    for runner in runners.values():  # warm-up
        _latencies_us(runner.infer, inputs, calls)
    medians: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            medians[key].append(statistics.median(_latencies_us(runners[key].infer, inputs, calls)))
    added = [a - b for a, b in zip(medians["isolated"], medians["inprocess"])]
    return {
        "isolated_median_us": round(statistics.median(medians["isolated"]), 1),
        "inprocess_median_us": round(statistics.median(medians["inprocess"]), 1),
        "added_median_us": round(statistics.median(added), 1),
        "added_quartiles_us": [round(q, 1) for q in statistics.quantiles(added, n=4)[::2]],
    }


def throughput_ratio(
    runners: dict[str, Runner], inputs: dict[str, np.ndarray], rounds: int, calls: int
) -> dict[str, float]:
    for runner in runners.values():
        _latencies_us(runner.infer, inputs, 2)
    seconds: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            seconds[key].append(sum(_latencies_us(runners[key].infer, inputs, calls)) / 1e6)
    ratios = [b / a for a, b in zip(seconds["isolated"], seconds["inprocess"])]
    batch = next(iter(inputs.values())).shape[0]
    return {
        "isolated_samples_per_s": round(batch * calls / statistics.median(seconds["isolated"]), 1),
        "inprocess_samples_per_s": round(
            batch * calls / statistics.median(seconds["inprocess"]), 1
        ),
        "ratio": round(statistics.median(ratios), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="encoder")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    handle = ModelRepository().handle(args.model)
    ensure_exported(handle)
    workload = Workload(handle)
    samples = workload.samples(32, stream="isolation-overhead")
    one, thirty_two = workload.collate(samples[:1]), workload.collate(samples)

    noop_handle = synthetic_handle()
    noop = _pair(noop_handle, "lab.bench.selftest:NoopRunner", {})
    noop_inputs = {s.name: np.zeros((1, *s.shape[1:]), s.dtype) for s in noop_handle.inputs}
    transport = added_latency_us(noop, noop_inputs, args.rounds, 200)
    ort = _pair(handle, "onnxruntime", {})
    latency = added_latency_us(ort, one, args.rounds, 40)
    throughput = throughput_ratio(ort, thirty_two, args.rounds, 3)
    for runner in [*noop.values(), *ort.values()]:
        runner.close()

    ok = latency["added_median_us"] <= MAX_ADDED_US and throughput["ratio"] >= MIN_THROUGHPUT_RATIO
    report = {
        "model": f"{handle.name} {handle.size}",
        "runner": "onnxruntime (default options)",
        "targets": {"max_added_us": MAX_ADDED_US, "min_throughput_ratio": MIN_THROUGHPUT_RATIO},
        "batch_1_added_latency": latency,
        "batch_32_throughput": throughput,
        "noop_transport_batch_1": transport,
        "ok": ok,
    }
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
