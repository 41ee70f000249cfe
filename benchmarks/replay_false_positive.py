"""False positives and detections of the replay check (MLPerf TEST04) on a real runner.

Runs `--honest` replay checks on the built-in ONNX Runtime runner and `--caching` checks on
the same runner with a result cache keyed by the input bytes, each check on its own sample
stream, with the harness's settings (in-process target, no queue delay, 64 samples in
blocks of 16, tolerance 25%). Meant for a busy, shared machine: that is the condition the
check must survive. Prints the counts and the median and range of the per-check ratios
(median of paired fresh / replay block ratios) and lower bounds, and how many checks the
former rule (ratio of the pooled medians above 1 + tolerance) would have flagged.
Target: no honest check flagged and every caching check flagged. Exit 1 when missed.

    .venv/bin/python benchmarks/replay_false_positive.py [--honest 50] [--caching 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from lab.bench.audit import REPLAY_TOLERANCE, replay_check
from lab.bench.selftest import CachingRunner
from lab.bench.target import InProcessTarget
from lab.export import ensure_exported
from lab.repository import ModelHandle, ModelRepository
from lab.runners.onnxruntime import OnnxRuntimeRunner
from lab.workload import Workload


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def run_checks(
    handle: ModelHandle, runner: OnnxRuntimeRunner, checks: int, count: int, label: str
) -> dict[str, Any]:
    """`checks` replay checks through one in-process target; each on a new sample stream."""
    workload = Workload(handle)
    results = []
    started = time.perf_counter()
    loaded = runner.load(handle)
    with loaded, InProcessTarget(loaded, max_queue_delay_us=0, preferred_batch_sizes=()) as target:
        for i in range(checks):
            results.append(replay_check(target, workload, count=count, stream=f"{label}-{i}"))
    first_passes = [r["passes"][0] for r in results if r["passes"]]
    return {
        "checks": checks,
        "flagged": sum(bool(r["flagged"]) for r in results),
        "confirmations_run": sum(len(r["passes"]) > 1 for r in results),
        "ratio": _summary([r["ratio"] for r in results if r["ratio"] is not None]),
        "lower_bound": _summary([r["lower_bound"] for r in results if r["lower_bound"]]),
        "first_pass_ratio": _summary([p["ratio"] for p in first_passes if p["ratio"]]),
        "flagged_as_cached": sum("look cached" in r["reason"] for r in results),
        # What the former rule (first pass, ratio of pooled medians > 1 + tolerance) said.
        "flagged_by_ratio_of_medians": sum(
            p["fresh_median_ms"] > (1 + REPLAY_TOLERANCE) * p["replay_median_ms"]
            for p in first_passes
            if p["fresh_median_ms"] is not None and p["replay_median_ms"] is not None
        ),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="encoder")
    parser.add_argument("--size", default="small")
    parser.add_argument("--honest", type=int, default=50, help="honest replay checks")
    parser.add_argument("--caching", type=int, default=10, help="caching-runner checks")
    parser.add_argument("--count", type=int, default=64, help="samples per pass")
    args = parser.parse_args()
    handle = ModelRepository().handle(args.model, args.size, "fp32")
    ensure_exported(handle)
    honest = run_checks(handle, OnnxRuntimeRunner(), args.honest, args.count, "honest")
    caching = run_checks(handle, CachingRunner(), args.caching, args.count, "caching")
    ok = honest["flagged"] == 0 and caching["flagged"] == args.caching
    print(
        json.dumps(
            {
                "model": f"{args.model}/{args.size}",
                "tolerance": REPLAY_TOLERANCE,
                "false_positives": f"{honest['flagged']}/{args.honest}",
                "detections": f"{caching['flagged']}/{args.caching}",
                "honest": honest,
                "caching": caching,
                "ok": ok,
            },
            indent=2,
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
