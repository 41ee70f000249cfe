"""Overhead of the built-in ONNX Runtime runner over a bare onnxruntime.InferenceSession.

Both run the same exported model on the same inputs, interleaved in short blocks so that
machine noise hits both alike; the figure is the median of per-round paired ratios
(runner / bare). A second ratio against `session.run` on the runner's own session isolates
the wrapper's cost (validation and timing) from session-to-session variation.
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

    def same_session_run(x: dict[str, np.ndarray]) -> object:
        return runner.session.run(names, x)

    contenders = {"runner": runner.infer, "bare": bare_run, "same_session": same_session_run}
    for _ in range(3):  # warm-up
        for fn in contenders.values():
            fn(inputs)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    order = list(contenders)
    for r in range(rounds):  # rotate the order so no contender always runs first
        for key in order[r % 3 :] + order[: r % 3]:
            times[key].append(_block_ms(contenders[key], inputs, calls))
    runner.close()
    # Paired ratios per round absorb slow drift of the machine; report their median.
    ratio_bare = statistics.median(a / b for a, b in zip(times["runner"], times["bare"]))
    ratio_same = statistics.median(a / b for a, b in zip(times["runner"], times["same_session"]))
    return {
        "batch": batch,
        "runner_median_ms": round(statistics.median(times["runner"]), 4),
        "bare_session_median_ms": round(statistics.median(times["bare"]), 4),
        "ratio": round(ratio_bare, 4),
        "ratio_vs_runner_own_session": round(ratio_same, 4),
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
    print(
        json.dumps(
            {"model": args.model, "target_ratio": TARGET_RATIO, "results": results, "ok": ok},
            indent=2,
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
