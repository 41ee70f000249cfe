"""Export: weights, reference set, ONNX and manifest for one model variant, idempotently.

`ensure_exported(handle)` brings `models/<name>/1/` up to date for (size, precision):

    <size>-weights.safetensors   deterministic fp32 weights (lab/weights.py), shared by precisions
    <size>-weights.json          the source hash they were generated from
    <size>-reference.npz         reference samples + PyTorch fp32 CPU outputs (public seed only)
    <size>-<precision>/model.onnx        opset 17, dynamic axes, one file (or + model.onnx.data)
    <size>-<precision>/manifest.json     hashes, opset, library versions, parity, export time

Nothing is rebuilt while the inputs are unchanged: the source hash (model.py + config.toml),
the library versions and the export format recorded in the manifest must all match.
Exports hold an exclusive lock on `models/<name>/1/.lock` and write every file atomically
(a temporary name, then os.replace), so concurrent processes never see half a file.

fp16 keeps the I/O contract of fp32 (int64 ids, fp32 dense inputs, fp32 outputs): the graph
computes in fp16 inside and casts its outputs back to fp32.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lab.errors import ExportError, ModelNotFound
from lab.repository import VERSION, ModelHandle

EXPORT_FORMAT = 1  # bump when the export logic changes what it writes
OPSET = 17
PARITY_SAMPLES = 16  # reference samples run through ONNX Runtime after export
PARITY_BATCH = 8  # in padded batches, so the parity check also covers padding
EXTERNAL_DATA_BYTES = 1 << 30  # parameters beyond 1 GiB go to model.onnx.data
MEMORY_FACTOR = 2.5  # peak memory of a big export per parameter byte (2.1 measured at 2.9 GB)
ONNX_NAME = "model.onnx"
ONNX_DATA_NAME = "model.onnx.data"

Log = Callable[[str], None]


@dataclass
class ExportOutcome:
    """What `export` did: `built` is False when everything was already up to date."""

    handle: ModelHandle
    built: bool
    manifest: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ReferenceSet:
    """Stored reference samples (batch dim 1 each) and their PyTorch fp32 outputs."""

    samples: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]
    meta: dict[str, Any]


# ----- hashes, versions, paths ---------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_sha256(handle: ModelHandle) -> str:
    """sha256 over the model definition and its config: what the generated files derive from."""
    from lab.weights import WEIGHTS_SEED

    digest = hashlib.sha256()
    for name in ("model.py", "config.toml"):
        digest.update(name.encode())
        digest.update((handle.directory / name).read_bytes())
    digest.update(f"weights-seed={WEIGHTS_SEED}".encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def weights_meta_path(handle: ModelHandle) -> Path:
    return handle.directory / VERSION / f"{handle.size}-weights.json"


def read_manifest(handle: ModelHandle) -> dict[str, Any] | None:
    try:
        return dict(json.loads(handle.manifest_path.read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, TypeError, ValueError):
        return {}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(handle: ModelHandle) -> Iterator[None]:
    """Exclusive lock on models/<name>/1/.lock (blocks until other exporters finish)."""
    lock_path = handle.directory / VERSION / ".lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ----- staleness -----------------------------------------------------------------------
def _weights_reasons(handle: ModelHandle, source: str) -> list[str]:
    if not handle.weights_path.is_file():
        return ["weights missing"]
    try:
        meta = json.loads(weights_meta_path(handle).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return ["weights have no record of their source"]
    if meta.get("source_sha256") != source:
        return ["model.py or config.toml changed since the weights were generated"]
    return []


def _reference_meta(handle: ModelHandle) -> dict[str, Any] | None:
    try:
        with np.load(handle.reference_path, allow_pickle=False) as data:
            return dict(json.loads(str(data["__meta__"])))
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return None


def _weights_sha(handle: ModelHandle) -> str | None:
    try:
        return str(json.loads(weights_meta_path(handle).read_text())["sha256"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def _reference_reasons(handle: ModelHandle, source: str, versions: dict[str, str]) -> list[str]:
    meta = _reference_meta(handle)
    if meta is None:
        return ["reference missing"]
    if meta.get("source_sha256") != source:
        return ["model.py or config.toml changed since the reference was computed"]
    if meta.get("weights_sha256") != _weights_sha(handle):
        return ["weights changed since the reference was computed"]
    if meta.get("torch") != versions["torch"] or meta.get("export_format") != EXPORT_FORMAT:
        return ["reference computed with another torch version or export format"]
    return []


def stale_reasons(handle: ModelHandle) -> list[str]:
    """Why the variant must be (re)built; empty when it is up to date."""
    source = source_sha256(handle)
    versions = library_versions()
    reasons = _weights_reasons(handle, source) + _reference_reasons(handle, source, versions)
    manifest = read_manifest(handle)
    if manifest is None or not handle.onnx_path.is_file():
        return [*reasons, f"{handle.size}-{handle.precision} not exported"]
    if not manifest:
        return [*reasons, "manifest unreadable"]
    if manifest.get("source_sha256") != source:
        reasons.append("model.py or config.toml changed since export")
    if manifest.get("versions") != versions:
        reasons.append("library versions changed since export")
    if manifest.get("export_format") != EXPORT_FORMAT:
        reasons.append("export format changed")
    if manifest.get("onnx_size_bytes") != handle.onnx_path.stat().st_size:
        reasons.append("model.onnx differs from the manifest")
    if manifest.get("weights_sha256") != _weights_sha(handle):
        reasons.append("weights changed since export")
    return reasons


# ----- the steps -----------------------------------------------------------------------
def _write_weights(handle: ModelHandle, source: str) -> str:
    from safetensors.numpy import save_file

    from lab.weights import generate

    path = handle.weights_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(generate(handle), str(tmp))
    tmp.chmod(0o644)  # safetensors writes 0600; a server running as another user must read it
    os.replace(tmp, path)
    sha = _sha256(path)
    meta = {"source_sha256": source, "sha256": sha, "size_bytes": path.stat().st_size}
    _atomic_write_text(weights_meta_path(handle), json.dumps(meta, indent=2) + "\n")
    return sha


def _write_reference(handle: ModelHandle, source: str, versions: dict[str, str]) -> None:
    from lab.workload import Workload

    seed = handle.config.public_seed  # never the secret seed: this file is stored
    workload = Workload(handle, seed=seed)
    samples = workload.samples(handle.config.reference_samples, stream="reference")
    outputs = workload.reference(samples, threads=1)
    arrays: dict[str, np.ndarray] = {}
    for i, (sample, output) in enumerate(zip(samples, outputs)):
        arrays.update({f"{i:06d}.input.{k}": v for k, v in sample.items()})
        arrays.update({f"{i:06d}.output.{k}": v for k, v in output.items()})
    meta = {
        "model": handle.name,
        "size": handle.size,
        "seed": seed,
        "stream": "reference",
        "samples": len(samples),
        "source_sha256": source,
        "weights_sha256": _weights_sha(handle),
        "torch": versions["torch"],
        "export_format": EXPORT_FORMAT,
        "computed": "PyTorch fp32 on the CPU, each sample alone at batch 1",
    }
    arrays["__meta__"] = np.array(json.dumps(meta))
    path = handle.reference_path
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def load_reference(handle: ModelHandle) -> ReferenceSet:
    """The stored reference set; ModelNotFound if it was never computed."""
    if not handle.reference_path.is_file():
        raise ModelNotFound(
            f"no reference for {handle.name} {handle.size}: run `servelab export {handle.name} "
            f"--size {handle.size}`"
        )
    with np.load(handle.reference_path, allow_pickle=False) as data:
        meta = dict(json.loads(str(data["__meta__"])))
        count = int(meta["samples"])
        samples: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
        outputs: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
        for key in data.files:
            if key == "__meta__":
                continue
            index, kind, name = key.split(".", 2)
            (samples if kind == "input" else outputs)[int(index)][name] = data[key]
    return ReferenceSet(samples, outputs, meta)


def _fp16_graph(module: Any) -> Any:
    """The module in fp16, taking the same inputs and casting its outputs back to fp32.

    Models keep their inputs' dtypes and cast what they need themselves (the ranker takes
    log1p of its fp32 counts before going to fp16), so int64 and fp32 inputs stay as they are.
    """
    import torch

    class Fp16Graph(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner.half()

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outputs = self.inner(*inputs)
            if isinstance(outputs, torch.Tensor):
                outputs = (outputs,)
            return tuple(o.float() for o in outputs)

    return Fp16Graph(module)


def _dynamic_axes(handle: ModelHandle) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for spec in handle.inputs:
        axes[spec.name] = {
            i: ("batch" if i == 0 else f"axis{i}") for i, d in enumerate(spec.shape) if d == -1
        }
    for spec in handle.outputs:
        axes[spec.name] = {
            i: ("batch" if i == 0 else f"{spec.name}_axis{i}")
            for i, d in enumerate(spec.shape)
            if d == -1
        }
    return axes


def _export_onnx(handle: ModelHandle, path: Path, external_data: bool) -> None:
    import onnx
    import torch

    from lab.weights import load_module
    from lab.workload import Workload

    module = load_module(handle, generate_missing=False)
    if handle.precision == "fp16":
        module = _fp16_graph(module)
    module.eval()
    workload = Workload(handle, seed=handle.config.public_seed)
    example = workload.collate(workload.samples(2, stream="export"))  # batch 2, padded
    args = tuple(torch.from_numpy(example[s.name]) for s in handle.inputs)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning and tracer notes
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[s.name for s in handle.inputs],
            output_names=[s.name for s in handle.outputs],
            dynamic_axes=_dynamic_axes(handle),
            do_constant_folding=True,
        )
    del module
    if external_data:
        model = onnx.load(str(path), load_external_data=True)
        for stray in path.parent.iterdir():  # per-tensor files a >2 GB legacy export leaves
            if stray != path:
                stray.unlink()
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=ONNX_DATA_NAME,
            size_threshold=1024,
        )
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the export of {handle.name}: {exc}") from exc


def _parity(handle: ModelHandle, path: Path, reference: ReferenceSet) -> dict[str, Any]:
    """Run reference samples through ONNX Runtime in padded batches; check with the checker."""
    import onnxruntime as ort

    from lab.batcher import collate, split
    from lab.check import Checker

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail, InvalidGraph... derive from Exception only
        raise ExportError(f"onnxruntime cannot load the exported {handle.name}: {exc}") from exc
    names = [s.name for s in handle.outputs]
    count = min(PARITY_SAMPLES, len(reference.samples))
    actual: list[dict[str, np.ndarray]] = []
    for start in range(0, count, PARITY_BATCH):
        chunk = reference.samples[start : min(start + PARITY_BATCH, count)]
        values = session.run(names, collate(chunk, handle.inputs))
        actual.extend(split(dict(zip(names, values)), [1] * len(chunk)))
    result = Checker.for_model(handle).check(actual, reference.outputs[:count])
    if not result:
        raise ExportError(
            f"parity check failed between PyTorch and ONNX Runtime for {handle.name} "
            f"{handle.size} {handle.precision}: " + "; ".join(result.failures)
        )
    return {
        "samples": count,
        "batch_size": PARITY_BATCH,
        "passed": True,
        "max_abs_err": {n: o.max_abs_err for n, o in result.outputs.items()},
    }


def parameter_bytes(handle: ModelHandle) -> int:
    """fp32 bytes of the model's parameters, from the built module's shapes (no weights drawn)."""
    module = handle.module.build(handle.size_config)
    return sum(int(t.numel()) * 4 for t in module.state_dict().values())


def _check_memory(handle: ModelHandle, param_bytes: int) -> None:
    """Refuse a big export up front rather than be killed for memory half way through."""
    if param_bytes <= EXTERNAL_DATA_BYTES:
        return
    import psutil

    available = int(psutil.virtual_memory().available)
    needed = MEMORY_FACTOR * param_bytes
    if available < needed:
        raise ExportError(
            f"exporting {handle.name} {handle.size} needs about {needed / 2**30:.1f} GiB of free "
            f"memory ({param_bytes / 2**30:.1f} GiB of parameters); this machine has "
            f"{available / 2**30:.1f} GiB available"
        )


def export(
    handle: ModelHandle,
    force: bool = False,
    external_data: bool | None = None,
    log: Log | None = None,
) -> ExportOutcome:
    """Bring the variant up to date (everything with `force`). See the module docstring.

    `external_data`: None decides by size (beyond EXTERNAL_DATA_BYTES of parameters).
    """
    say = log or (lambda message: None)
    if not force:
        reasons = stale_reasons(handle)
        if not reasons:
            return ExportOutcome(handle, False, read_manifest(handle) or {})
    with _locked(handle):
        reasons = ["forced"] if force else stale_reasons(handle)
        if not reasons:  # another process finished it while we waited for the lock
            return ExportOutcome(handle, False, read_manifest(handle) or {})
        started = time.perf_counter()
        param_bytes = parameter_bytes(handle)
        _check_memory(handle, param_bytes)
        source = source_sha256(handle)
        versions = library_versions()
        if force or _weights_reasons(handle, source):
            say(f"generating weights {handle.weights_path.name}")
            _write_weights(handle, source)
        weights_sha = _weights_sha(handle)
        if force or _reference_reasons(handle, source, versions):
            say(f"computing the reference set ({handle.config.reference_samples} samples)")
            _write_reference(handle, source, versions)
        reference = load_reference(handle)

        if external_data is None:
            external_data = param_bytes > EXTERNAL_DATA_BYTES
        final_dir = handle.version_dir
        staging = final_dir.with_name(f".{final_dir.name}.{os.getpid()}.staging")
        if staging.exists():
            for stale in staging.iterdir():
                stale.unlink()
        staging.mkdir(parents=True, exist_ok=True)
        try:
            say(f"exporting ONNX (opset {OPSET}, {handle.precision})")
            _export_onnx(handle, staging / ONNX_NAME, external_data)
            say("checking parity between PyTorch and ONNX Runtime")
            parity = _parity(handle, staging / ONNX_NAME, reference)
            final_dir.mkdir(parents=True, exist_ok=True)
            data = staging / ONNX_DATA_NAME
            if data.is_file():
                data.chmod(0o644)  # onnx writes external data 0600
                os.replace(data, final_dir / ONNX_DATA_NAME)
            else:
                (final_dir / ONNX_DATA_NAME).unlink(missing_ok=True)
            os.replace(staging / ONNX_NAME, handle.onnx_path)
        finally:
            for leftover in staging.iterdir() if staging.exists() else ():
                leftover.unlink()
            if staging.exists():
                staging.rmdir()

        manifest: dict[str, Any] = {
            "model": handle.name,
            "size": handle.size,
            "precision": handle.precision,
            "opset": OPSET,
            "onnx": ONNX_NAME,
            "onnx_sha256": _sha256(handle.onnx_path),
            "onnx_size_bytes": handle.onnx_path.stat().st_size,
            "external_data": ONNX_DATA_NAME if external_data else None,
            "weights": handle.weights_path.name,
            "weights_sha256": weights_sha,
            "reference": handle.reference_path.name,
            "reference_sha256": _sha256(handle.reference_path),
            "reference_seed": reference.meta["seed"],
            "source_sha256": source,
            "export_format": EXPORT_FORMAT,
            "versions": versions,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                for s in handle.inputs
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                for s in handle.outputs
            ],
            "parity": parity,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "export_s": round(time.perf_counter() - started, 3),
        }
        if external_data:
            manifest["external_data_sha256"] = _sha256(final_dir / ONNX_DATA_NAME)
        _atomic_write_text(handle.manifest_path, json.dumps(manifest, indent=2) + "\n")
        return ExportOutcome(handle, True, manifest, reasons, time.perf_counter() - started)


def ensure_exported(handle: ModelHandle) -> None:
    """Export the variant if anything it derives from changed (idempotent, process-safe)."""
    export(handle)
