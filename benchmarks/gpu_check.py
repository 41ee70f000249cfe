"""One command that exercises the GPU path in a short GPU window (< 6 minutes on one H100/H200).

    python benchmarks/gpu_check.py [--out DIR]      # DIR defaults to $OUT, else ./gpu-check

It installs nothing and needs no network. It expects torch with CUDA, onnx, onnxruntime
(CPU is fine), numpy, psutil, safetensors and nvidia-ml-py; TensorRT, pycuda and
onnxruntime-gpu are used when importable and reported "skipped: reason" otherwise.

Every check runs in its own process with its own timeout (a CUDA hang cannot stall the rest);
its exception or exit status is captured. Results: `DIR/gpu_check.json` (one entry per check:
status pass | fail | skipped, reason, seconds, figures) and `DIR/gpu_check.log` (every
command's output). Exit 1 when a check that could run failed, else 0.

Checks: the environment fingerprint; the `@pytest.mark.gpu` tests; NVML telemetry; GPU
ceilings (fp32, tf32, fp16 with CUDA events); verify of encoder `base` with torch CUDA in
fp32, tf32, fp16 and fp16 + CUDA graphs; a short `servelab bench` (offline) of each of tf32,
fp16 and fp16 + CUDA graphs against torch CUDA fp32 as `--baseline` (same-run speed-ups);
`servelab bench --dist replicas|shard|tensor --nproc 1 --dist-backend nccl` (one rank);
verify with ONNX Runtime CUDA/TensorRT providers and the TensorRT runner when importable.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model", "encoder", "--size", "base"]
CUDA = ["--runner", "torch", "--runner-option", "device=cuda"]
BENCH = ["--scenario", "offline", "--duration-s", "4", "--min-queries", "128",
         "--warmup-queries", "16", "--no-html", "--no-progress", "--no-replay-check"]  # fmt: skip


def _servelab(*args: str) -> list[str]:
    return [sys.executable, "-m", "lab", *args]


# ----- checks that run inside a child of this script (--run-check NAME) ------------------------
def _environment() -> dict[str, Any]:
    from lab.bench.environment import fingerprint

    return {"environment": fingerprint(ROOT)}


def _ceilings() -> dict[str, Any]:
    from lab.bench.roofline import measure_gpu_ceilings

    out = {}
    for math in ("fp32", "tf32", "fp16"):
        c = measure_gpu_ceilings("cuda:0", math, budget_s=1.0)
        out[math] = {
            "tflops": c["peak_flops_per_s"] / 1e12,
            "gb_per_s": c["peak_bytes_per_s"] / 1e9,
        }
    return {"ceilings": out}


def _telemetry() -> dict[str, Any]:
    import torch

    from lab.bench.telemetry import Telemetry

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    with Telemetry(interval_s=0.1) as telemetry:
        deadline = time.perf_counter() + 2.0
        while time.perf_counter() < deadline:
            for _ in range(20):
                a @ a
            torch.cuda.synchronize(0)
    summary = telemetry.summary()
    if summary["gpu"].startswith("no GPU"):
        raise RuntimeError(f"NVML saw no GPU: {summary['gpu']}")
    return {"telemetry": summary}


INTERNAL: dict[str, Callable[[], dict[str, Any]]] = {
    "environment": _environment,
    "gpu-ceilings": _ceilings,
    "nvml-telemetry": _telemetry,
}


def run_internal(name: str, result_path: Path) -> int:
    try:
        info = {"status": "pass", **INTERNAL[name]()}
    except Exception as exc:  # captured, reported, never swallowed
        info = {"status": "fail", "reason": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()}  # fmt: skip
    result_path.write_text(json.dumps(info, indent=2, default=str))
    return 0 if info["status"] == "pass" else 1


# ----- the plan ----------------------------------------------------------------------------------
def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU (built for CUDA {torch.version.cuda})"
    return None


def plan() -> list[tuple[str, list[str] | None, int, str | None]]:
    """(name, command or None for an internal check, timeout_s, skip reason or None)."""
    no_cuda = _cuda_reason()
    providers = _ort_providers()
    trt = None if _importable("tensorrt") else "tensorrt is not importable"
    ort_cuda = (
        None
        if "CUDAExecutionProvider" in providers
        else "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    )
    ort_trt = None if "TensorrtExecutionProvider" in providers else "onnxruntime has no TensorrtExecutionProvider"  # fmt: skip
    checks: list[tuple[str, list[str] | None, int, str | None]] = [
        ("environment", None, 30, None),
        ("pytest-gpu", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu_path.py"], 150, no_cuda),
        ("nvml-telemetry", None, 30, no_cuda or (None if _importable("pynvml") else "nvidia-ml-py is not installed")),
        ("gpu-ceilings", None, 40, no_cuda),
        ("export-encoder-base", _servelab("export", "encoder", "--size", "base", "--precision", "fp32"), 120, None),
        ("verify-torch-cuda-fp32", _servelab("verify", *MODEL, "--precision", "fp32", *CUDA), 60, no_cuda),
        ("verify-torch-cuda-tf32", _servelab("verify", *MODEL, "--precision", "tf32", *CUDA, "--runner-option", "dtype=tf32"), 90, no_cuda),
        ("verify-torch-cuda-fp16", _servelab("verify", *MODEL, "--precision", "fp16", *CUDA, "--runner-option", "dtype=fp16"), 90, no_cuda),
        ("verify-torch-cuda-fp16-graphs", _servelab("verify", *MODEL, "--precision", "fp16", *CUDA, "--runner-option", "dtype=fp16", "--runner-option", "cuda_graph=true"), 60, no_cuda),
    ]  # fmt: skip
    # torch.distributed over NCCL: one rank on one GPU (NCCL refuses two ranks on one device),
    # which still runs init, every collective of each mode, and the rank's CUDA pinning.
    for mode, model in (("replicas", "encoder"), ("shard", "ranker"), ("tensor", "encoder")):
        command = _servelab("bench", "--model", model, "--size", "small", "--dist", mode,
                            "--nproc", "1", "--dist-backend", "nccl", *BENCH,
                            "--name", f"dist-nccl-{mode}")  # fmt: skip
        checks.append((f"bench-dist-nccl-{mode}", command, 90, no_cuda))
    for label, precision, options in (
        ("tf32", "tf32", ["dtype=tf32"]),
        ("fp16", "fp16", ["dtype=fp16"]),
        ("fp16-graphs", "fp16", ["dtype=fp16", "cuda_graph=true"]),
    ):
        extra = [a for o in options for a in ("--runner-option", o)]
        command = _servelab("bench", *MODEL, "--precision", precision, *CUDA, *extra,
                            "--baseline", "torch", "--baseline-option", "device=cuda", *BENCH,
                            "--name", f"torch-cuda-{label}-vs-fp32")  # fmt: skip
        checks.append((f"bench-torch-cuda-{label}-vs-fp32", command, 100, no_cuda))
    checks += [
        ("verify-ort-cuda-fp32", _servelab("verify", *MODEL, "--precision", "fp32", "--runner", "onnxruntime", "--runner-option", "provider=cuda"), 90, no_cuda or ort_cuda),
        ("verify-ort-tensorrt-fp16", _servelab("verify", *MODEL, "--precision", "fp16", "--runner", "onnxruntime", "--runner-option", "provider=tensorrt"), 150, no_cuda or ort_trt),
        ("verify-tensorrt-fp32", _servelab("verify", *MODEL, "--precision", "fp32", "--runner", "tensorrt"), 150, no_cuda or trt),
        ("verify-tensorrt-fp16-graphs", _servelab("verify", *MODEL, "--precision", "fp16", "--runner", "tensorrt", "--runner-option", "cuda_graph=true"), 150, no_cuda or trt),
    ]  # fmt: skip
    return checks


def _speedups(out: Path, name: str) -> dict[str, Any]:
    """The same-run speed-ups from a bench report written under `out`."""
    figures: dict[str, Any] = {}
    for path in sorted(out.glob(f"**/*-{name}.json")):  # <timestamp>-<--name>.json
        try:
            report = json.loads(path.read_text())
        except ValueError:
            continue
        for scenario in report.get("scenarios", []):
            if scenario.get("speedup") is not None:
                figures[scenario["scenario"]] = scenario["speedup"]
            throughput = scenario.get("throughput") or {}
            figures[f"{scenario['scenario']}_throughput"] = throughput
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check")
    parser.add_argument("--run-check", help=argparse.SUPPRESS)
    parser.add_argument("--only", action="append", help="run only these checks (repeatable)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="the whole run's time limit: each check's timeout is cut to what is left, and "
        "checks that no longer fit are skipped with that reason (default 330 s, so that one "
        "command fits a 6-minute GPU window)",
    )
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.run_check:
        return run_internal(args.run_check, out / f"{args.run_check}.result.json")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    results: list[dict[str, Any]] = []
    started_all = time.perf_counter()
    with open(out / "gpu_check.log", "w") as log:
        for name, command, timeout_s, skip in plan():
            if args.only and name not in args.only:
                continue
            entry: dict[str, Any] = {"check": name}
            if skip:
                entry.update(status="skipped", reason=f"skipped: {skip}")
                results.append(entry)
                print(json.dumps(entry), flush=True)
                continue
            left_s = args.budget_s - (time.perf_counter() - started_all)
            if left_s < 10:
                entry.update(status="skipped", reason="skipped: the run's --budget-s is spent")
                results.append(entry)
                print(json.dumps(entry), flush=True)
                continue
            timeout_s = int(min(timeout_s, left_s))
            internal = command is None
            argv = command or [sys.executable, __file__, "--run-check", name, "--out", str(out)]
            if argv[:3] == [sys.executable, "-m", "lab"] and argv[3] == "bench":
                argv = [*argv, "--output", str(out / "reports")]
            log.write(f"\n===== {name}: {' '.join(argv)}\n")
            log.flush()
            start = time.perf_counter()
            try:
                done = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout_s, check=False)  # fmt: skip
                entry["status"] = "pass" if done.returncode == 0 else "fail"
                if done.returncode != 0:
                    entry["reason"] = f"exit status {done.returncode} (see gpu_check.log)"
            except subprocess.TimeoutExpired:
                entry.update(status="fail", reason=f"timed out after {timeout_s} s")
            except OSError as exc:
                entry.update(status="fail", reason=f"could not start: {exc}")
            entry["seconds"] = round(time.perf_counter() - start, 1)
            if internal:
                result_file = out / f"{name}.result.json"
                if result_file.is_file():
                    detail = json.loads(result_file.read_text())
                    entry.update({k: v for k, v in detail.items() if k != "status"})
            if name.startswith("bench-"):
                entry["figures"] = _speedups(out / "reports", name.removeprefix("bench-"))
            results.append(entry)
            print(
                json.dumps({k: v for k, v in entry.items() if k != "traceback"}, default=str)[
                    :2000
                ],
                flush=True,
            )
    failed = [r["check"] for r in results if r["status"] == "fail"]
    summary = {
        "schema_version": "1.0",
        "kind": "servelab-gpu-check",
        "total_s": round(time.perf_counter() - started_all, 1),
        "summary": {r["check"]: r["status"] for r in results},
        "failed": failed,
        "checks": results,
    }
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({"summary": summary["summary"], "failed": failed, "out": str(out)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
