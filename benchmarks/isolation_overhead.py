"""Cost of running a runner in its isolated worker process instead of in the harness's own.

The same runner (ONNX Runtime on the encoder, same options) is loaded twice, once behind the
worker (shared memory + a socket round trip per batch) and once in this process, and both
are called on the same inputs in interleaved blocks, so that drift hits both alike.

- Added latency at batch 1, per call and paired: (isolated call - the worker's hook time)
  minus (in-process call - the in-process hook time). This is what isolation adds to a query
  (validation, shared-memory copies, the round trip, waking the worker), free of the
  +-20% session-to-session and minute-to-minute noise of ONNX Runtime on a shared VM, which
  is many times larger than the figure itself. The hook's time comes from the worker's own
  clock: fine for this benchmark of a built-in runner, never used by the harness's results.
  Target: median <= 50 us.
- The end-to-end medians at batch 1 and the hook times on both sides are printed too, so a
  slow-down of the compute itself (e.g. the waiting parent taking CPU from the worker)
  would show.
- Throughput at batch 32: ratio of samples/s, isolated / in-process, per round, median.
  Target: >= 0.97.

A no-op runner measured the same way gives the transport's cost alone.
`--intra-op-threads` (default 1) sets ONNX Runtime's threads for both copies: with more, the
idle copy's pool threads spin and take the busy copy's cores on a small machine.
Exit 1 when a target is missed.

    .venv/bin/python benchmarks/isolation_overhead.py [--model encoder] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping

import numpy as np

from lab.bench.selftest import synthetic_handle
from lab.export import ensure_exported
from lab.isolation import make_runner
from lab.isolation.runner import IsolatedRunner
from lab.repository import ModelHandle, ModelRepository
from lab.runners.base import Runner
from lab.workload import Workload

MAX_ADDED_US = 50.0
MIN_THROUGHPUT_RATIO = 0.97


def _calls(runner: Runner, inputs: Mapping[str, np.ndarray], n: int) -> list[tuple[float, float]]:
    """(call us, hook us) for n calls."""
    out = []
    for _ in range(n):
        start = time.perf_counter_ns()
        runner.infer(inputs)
        total_us = (time.perf_counter_ns() - start) / 1e3
        if isinstance(runner, IsolatedRunner):
            hook_us = runner.worker_hook_ns / 1e3
        else:
            hook_us = runner.last_infer_ms * 1e3
        out.append((total_us, hook_us))
    return out


def _pair(handle: ModelHandle, spec: str, options: dict[str, object]) -> dict[str, Runner]:
    return {
        "isolated": make_runner(spec, options).load(handle),
        "inprocess": make_runner(spec, options, isolation="none").load(handle),
    }


def _rounds(
    runners: dict[str, Runner], inputs: Mapping[str, np.ndarray], rounds: int, calls: int
) -> dict[str, list[list[tuple[float, float]]]]:
    for runner in runners.values():  # warm-up
        _calls(runner, inputs, calls)
    measured: dict[str, list[list[tuple[float, float]]]] = {k: [] for k in runners}
    order = list(runners)
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            measured[key].append(_calls(runners[key], inputs, calls))
    return measured


def added_latency(
    runners: dict[str, Runner], inputs: Mapping[str, np.ndarray], rounds: int, calls: int
) -> dict[str, object]:
    measured = _rounds(runners, inputs, rounds, calls)
    added = []
    for iso, local in zip(measured["isolated"], measured["inprocess"]):
        iso_overhead = statistics.median(t - h for t, h in iso)
        local_overhead = statistics.median(t - h for t, h in local)
        added.append(iso_overhead - local_overhead)

    def median_of(key: str, index: int) -> float:
        return round(statistics.median(c[index] for block in measured[key] for c in block), 1)

    return {
        "added_median_us": round(statistics.median(added), 1),
        "added_per_round_quartiles_us": [
            round(q, 1) for q in statistics.quantiles(added, n=4)[::2]
        ],
        "end_to_end_median_us": {
            "isolated": median_of("isolated", 0),
            "inprocess": median_of("inprocess", 0),
        },
        "hook_median_us": {
            "isolated": median_of("isolated", 1),
            "inprocess": median_of("inprocess", 1),
        },
    }


def throughput_ratio(
    runners: dict[str, Runner], inputs: Mapping[str, np.ndarray], rounds: int, calls: int
) -> dict[str, float]:
    measured = _rounds(runners, inputs, rounds, calls)
    seconds = {k: [sum(t for t, _ in block) / 1e6 for block in v] for k, v in measured.items()}
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
    parser.add_argument("--intra-op-threads", type=int, default=1)
    args = parser.parse_args()

    handle = ModelRepository().handle(args.model)
    ensure_exported(handle)
    workload = Workload(handle)
    samples = workload.samples(32, stream="isolation-overhead")
    one, thirty_two = workload.collate(samples[:1]), workload.collate(samples)

    noop_handle = synthetic_handle()
    noop = _pair(noop_handle, "lab.bench.selftest:NoopRunner", {})
    noop_inputs = {s.name: np.zeros((1, *s.shape[1:]), s.dtype) for s in noop_handle.inputs}
    transport = added_latency(noop, noop_inputs, args.rounds, 200)
    ort = _pair(handle, "onnxruntime", {"intra_op_threads": args.intra_op_threads})
    latency = added_latency(ort, one, args.rounds, 40)
    throughput = throughput_ratio(ort, thirty_two, args.rounds, 3)
    for runner in [*noop.values(), *ort.values()]:
        runner.close()

    added = float(latency["added_median_us"])  # type: ignore[arg-type]
    ok = added <= MAX_ADDED_US and throughput["ratio"] >= MIN_THROUGHPUT_RATIO
    report = {
        "model": f"{handle.name} {handle.size}",
        "runner": f"onnxruntime intra_op_threads={args.intra_op_threads}",
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
