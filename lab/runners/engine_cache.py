"""A cache of serialized TensorRT engines (plans) that two workers can share safely.

A plan is only valid for the exact inputs of its build, so the key hashes all of them:
the ONNX and weights sha256 from the export manifest, the TensorRT version, the GPU's name
and compute capability, the math mode, the optimisation profiles and the builder options
that change the plan. Beside each `<key>.plan` sits `<key>.json` (what was built, when, how
long it took, the builder's warnings). Builds run under an exclusive file lock per key, so
two server workers starting at once build once; files are written to a temporary name and
renamed (readers never see half a plan). The builder's timing cache persists per GPU and
TensorRT version (`timing-<...>.cache`) and makes rebuilds much faster.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import RunnerError

KEY_FORMAT = 1


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan depends on. `digest` names its files."""

    onnx_sha256: str
    weights_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    math_mode: str
    profiles: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]
    builder: tuple[tuple[str, str], ...] = ()

    def fields(self) -> dict[str, Any]:
        return {
            "key_format": KEY_FORMAT,
            "onnx_sha256": self.onnx_sha256,
            "weights_sha256": self.weights_sha256,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "math_mode": self.math_mode,
            "profiles": [[n, list(lo), list(opt), list(hi)] for n, lo, opt, hi in self.profiles],
            "builder": dict(self.builder),
        }

    @property
    def digest(self) -> str:
        text = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def make_key(
    manifest: Mapping[str, Any],
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    math_mode: str,
    profiles: Mapping[str, Any],
    builder: Mapping[str, Any] | None = None,
) -> EngineKey:
    """An EngineKey from the export manifest (its onnx/weights sha256) and the build setup."""
    missing = [k for k in ("onnx_sha256", "weights_sha256") if not manifest.get(k)]
    if missing:
        raise RunnerError(
            f"the export manifest has no {', '.join(missing)}: re-export the model "
            "(`servelab export ... --force`)"
        )
    return EngineKey(
        onnx_sha256=str(manifest["onnx_sha256"]),
        weights_sha256=str(manifest["weights_sha256"]),
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=f"{compute_capability[0]}.{compute_capability[1]}",
        math_mode=math_mode,
        profiles=tuple(
            (name, tuple(p.min), tuple(p.opt), tuple(p.max)) for name, p in sorted(profiles.items())
        ),
        builder=tuple(sorted((k, str(v)) for k, v in (builder or {}).items())),
    )


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl.flock) held for the block; released on exit, and by
    the kernel if the process dies."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass
class CachedPlan:
    plan: bytes
    path: Path
    built: bool  # False: read from the cache
    manifest: dict[str, Any]


class EngineCache:
    """Plans under `folder` (by default `<model version folder>/engines/`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def plan_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.digest}.plan"

    def manifest_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.digest}.json"

    def timing_cache_path(self, key: EngineKey) -> Path:
        tag = hashlib.sha256(
            f"{key.tensorrt_version}|{key.gpu_name}|{key.compute_capability}".encode()
        ).hexdigest()[:16]
        return self.folder / f"timing-{tag}.cache"

    def get_or_build(
        self, key: EngineKey, build: Callable[[bytes], tuple[bytes, bytes, dict[str, Any]]]
    ) -> CachedPlan:
        """The cached plan for `key`, or `build(timing_cache_bytes)` -> (plan, new timing
        cache, build info) under the key's lock, written atomically with its manifest."""
        plan_path = self.plan_path(key)
        if plan_path.is_file():  # fast path: no lock needed to read a renamed-in file
            return CachedPlan(plan_path.read_bytes(), plan_path, False, self._read_manifest(key))
        with file_lock(self.folder / f"{key.digest}.lock"):
            if plan_path.is_file():  # another worker built it while we waited
                return CachedPlan(
                    plan_path.read_bytes(), plan_path, False, self._read_manifest(key)
                )
            timing_path = self.timing_cache_path(key)
            with file_lock(timing_path.with_suffix(".lock")):
                timing = timing_path.read_bytes() if timing_path.is_file() else b""
            plan, new_timing, info = build(timing)
            manifest = {**key.fields(), **info, "plan": plan_path.name, "plan_bytes": len(plan)}
            atomic_write(self.manifest_path(key), json.dumps(manifest, indent=2).encode())
            atomic_write(plan_path, plan)  # the plan last: its presence means "complete"
            if new_timing:
                with file_lock(timing_path.with_suffix(".lock")):
                    atomic_write(timing_path, new_timing)
        return CachedPlan(plan, plan_path, True, manifest)

    def _read_manifest(self, key: EngineKey) -> dict[str, Any]:
        try:
            return dict(json.loads(self.manifest_path(key).read_text()))
        except (OSError, ValueError):
            return {}
