"""One short script that exercises every GPU code path, for a machine with an NVIDIA GPU.

It verifies each GPU runner against the fp32 reference (batch 1, padded mixed-length
batches, fresh samples), each in its own worker process as `servelab bench` runs it (so the
worker, not this process, owns the CUDA context; `--isolation none` runs them here), and
prints one JSON line per check, then a summary. Checks that cannot run (no GPU, library missing) are reported as skipped
with the reason, never as passed. Exit 1 when any check that ran failed.

    pip install -e '.[gpu]'   # tensorrt, onnxruntime-gpu, nvidia-ml-py
    python benchmarks/gpu_check.py [--model encoder] [--size small]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from lab.errors import BackendUnavailable, LabError
from lab.export import ensure_exported
from lab.isolation import ISOLATION_MODES, make_runner
from lab.repository import ModelRepository
from lab.verify import verify_runner

CHECKS: list[tuple[str, str, dict[str, Any], str]] = [
    ("torch-cuda-fp32", "torch", {"device": "cuda"}, "fp32"),
    ("torch-cuda-fp16", "torch", {"device": "cuda", "dtype": "fp16"}, "fp16"),
    ("ort-cuda", "onnxruntime", {"provider": "cuda"}, "fp32"),
    ("ort-tensorrt", "onnxruntime", {"provider": "tensorrt"}, "fp32"),
    ("tensorrt-fp32", "tensorrt", {}, "fp32"),
    ("tensorrt-fp16-graph", "tensorrt", {"cuda_graph": True}, "fp16"),
]


def _nvml() -> dict[str, Any]:
    from lab.bench.telemetry import gpu_inventory  # the harness's NVML reader

    return gpu_inventory()


def run_check(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        info = {"check": name, "status": "pass", **fn()}
    except BackendUnavailable as exc:
        info = {"check": name, "status": "skipped", "reason": str(exc)}
    except LabError as exc:
        info = {"check": name, "status": "fail", "reason": str(exc)}
    info["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(info), flush=True)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="encoder")
    parser.add_argument("--size", default="small")
    parser.add_argument("--isolation", default="process", choices=ISOLATION_MODES)
    args = parser.parse_args()
    repo = ModelRepository()
    results = [run_check("nvml", lambda: {"gpu": _nvml()})]
    for name, runner_name, options, precision in CHECKS:

        def check(
            runner_name: str = runner_name,
            options: dict[str, Any] = options,
            precision: str = precision,
        ) -> dict[str, Any]:
            handle = repo.handle(args.model, args.size, precision)
            ensure_exported(handle)
            with make_runner(runner_name, options, isolation=args.isolation) as runner:
                runner.load(handle)
                result = verify_runner(handle, runner)
                if not result.passed:
                    raise LabError(result.summary())
                return {"runner": runner.describe()}

        results.append(run_check(name, check))
    failed = [r["check"] for r in results if r["status"] == "fail"]
    print(json.dumps({"summary": {r["check"]: r["status"] for r in results}, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
