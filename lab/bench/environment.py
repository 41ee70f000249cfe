"""The environment fingerprint a report carries, so that reports from different machines are
compared knowingly: CPU, GPU and driver, library versions, the git commit and whether the
tree was dirty, and the hashes of the exact model and weights that were measured."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from lab import __version__
from lab.bench.telemetry import gpu_inventory
from lab.repository import ModelHandle

LIBRARIES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "psutil",
             "pycuda", "nvidia-ml-py")  # fmt: skip
# TensorRT ships under several distribution names; which one is installed tells its CUDA major.
TENSORRT_PACKAGES = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "servelab": __version__}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def cuda_stack() -> dict[str, Any]:
    """CUDA runtime and cuDNN that torch was built with, the installed TensorRT package(s), and
    a warning when onnxruntime and onnxruntime-gpu are both installed (they overwrite each
    other's files). Reads versions only: no CUDA context is created in the harness."""
    info: dict[str, Any] = {"cuda_runtime": None, "cudnn": None}
    try:
        import torch

        info["cuda_runtime"] = torch.version.cuda
        if torch.version.cuda:
            info["cudnn"] = torch.backends.cudnn.version()
    except (ImportError, RuntimeError, OSError):
        pass
    packages = {}
    for name in TENSORRT_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    info["tensorrt_packages"] = packages
    installed = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(name)
            installed.add(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if len(installed) == 2:
        info["warning"] = "onnxruntime and onnxruntime-gpu are both installed: keep one"
    return info


def git_state(root: Path) -> dict[str, Any]:
    """The commit and whether the working tree differs from it (read-only git commands)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain")  # untracked files count: a plugin may be one
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    from lab.weights import sha256_file

    return sha256_file(path)


def model_fingerprint(
    handle: ModelHandle, seed_label: Any, seed_source: str | None = None
) -> dict[str, Any]:
    return {
        "name": handle.name,
        "size": handle.size,
        "precision": handle.precision,
        "onnx_sha256": file_sha256(handle.onnx_path),
        "weights_sha256": file_sha256(handle.weights_path),
        "public_seed": handle.config.public_seed,
        "seed": seed_label,
        "seed_source": seed_source
        or ("public" if seed_label == handle.config.public_seed else "given"),
        "slo_ms": handle.config.slo_ms,
        "max_batch_size": handle.config.max_batch_size,
    }


def fingerprint(root: Path | None = None) -> dict[str, Any]:
    import psutil

    root = root or Path(__file__).resolve().parents[2]
    memory = psutil.virtual_memory()
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": {
            "model": cpu_model(),
            "physical_cores": psutil.cpu_count(logical=False),
            "logical_cores": psutil.cpu_count(logical=True),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "memory_bytes": int(memory.total),
        "gpu": gpu_inventory(),
        "cuda": cuda_stack(),
        "libraries": library_versions(),
        "git": git_state(root),
    }
