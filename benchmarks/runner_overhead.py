"""Overhead of the built-in ONNX Runtime runner over a bare onnxruntime.InferenceSession.

Both run the same exported model on the same inputs, interleaved in short blocks so that
machine noise hits both alike; the figure is the ratio of median per-call times.
Target: runner / bare <= 1.03 at batch 1 and batch 32. Exit 1 when a target is missed.

    .venv/bin/python benchmarks/runner_overhead.py [--model encoder] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

from lab.export import ensure_exported
from lab.repository import ModelRepository
from lab.runners import create_runner
from lab.workload import Workload

TARGET_RATIO = 1.03


def _block_ms(fn, inputs, calls: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn(inputs)
    return (time.perf_counter_ns() - start) / 1e6 / calls


def measure(model: str, batch: int, rounds: int, calls: int) -> dict[str, float]:
    handle = ModelRepository().handle(model)
    ensure_exported(handle)
    workload = Workload(handle)
    inputs = workload.collate(workload.samples(batch, stream="overhead"))
    runner = create_runner("onnxruntime").load(handle)
    names = [o.name for o in handle.outputs]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    bare = ort.InferenceSession(str(handle.onnx_path), so, providers=["CPUExecutionProvider"])

    def bare_run(x: dict[str, np.ndarray]) -> object:
        return bare.run(names, x)

    for _ in range(3):  # warm-up both
        runner.infer(inputs)
        bare_run(inputs)
    runner_ms, bare_ms = [], []
    for r in range(rounds):  # alternate the order so neither always runs first
        pair = [(runner.infer, runner_ms), (bare_run, bare_ms)]
        for fn, out in pair if r % 2 == 0 else pair[::-1]:
            out.append(_block_ms(fn, inputs, calls))
    runner.close()
    r_med, b_med = statistics.median(runner_ms), statistics.median(bare_ms)
    return {
        "batch": batch,
        "runner_median_ms": round(r_med, 4),
        "bare_median_ms": round(b_med, 4),
        "ratio": round(r_med / b_med, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="encoder")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args()
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        calls = 20 if batch == 1 else 2
        results.append(measure(args.model, batch, args.rounds, calls))
    ok = all(r["ratio"] <= TARGET_RATIO for r in results)
    print(json.dumps({"model": args.model, "target_ratio": TARGET_RATIO, "results": results, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
