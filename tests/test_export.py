"""Export: ONNX + manifest + reference, idempotent, process-safe, atomic, parity-checked."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest

import lab.export
from lab.errors import ExportError, ModelNotFound
from lab.export import (
    OPSET,
    ExportOutcome,
    ensure_exported,
    export,
    library_versions,
    load_reference,
    read_manifest,
    source_sha256,
    stale_reasons,
)
from lab.repository import ModelHandle, ModelRepository
from lab.runners.onnxruntime import OnnxRuntimeRunner
from lab.verify import verify
from lab.weights import sha256_file


def _copy_model(repo_root: Path, tmp_path: Path, name: str, reference_samples: int = 8) -> Path:
    """A private repository holding a copy of one model (fewer reference samples: faster)."""
    dest = tmp_path / "models" / name
    dest.mkdir(parents=True)
    shutil.copy(repo_root / "models" / name / "model.py", dest / "model.py")
    config = (repo_root / "models" / name / "config.toml").read_text()
    lines = [
        f"reference_samples = {reference_samples}" if line.startswith("reference_samples") else line
        for line in config.splitlines()
    ]
    (dest / "config.toml").write_text("\n".join(lines) + "\n")
    return tmp_path / "models"


def test_manifest_records_hashes_opset_versions_and_parity(encoder_small: ModelHandle) -> None:
    manifest = read_manifest(encoder_small)
    assert manifest is not None
    assert manifest["onnx_sha256"] == sha256_file(encoder_small.onnx_path)
    assert manifest["weights_sha256"] == sha256_file(encoder_small.weights_path)
    assert manifest["reference_sha256"] == sha256_file(encoder_small.reference_path)
    assert manifest["source_sha256"] == source_sha256(encoder_small)
    assert manifest["versions"] == library_versions()
    assert (manifest["size"], manifest["precision"], manifest["opset"]) == ("small", "fp32", 17)
    assert manifest["parity"]["passed"] is True and manifest["export_s"] > 0
    assert set(manifest["parity"]["max_abs_err"]) == {"embedding", "logits"}


def test_onnx_is_one_file_with_opset_17_and_dynamic_axes(encoder_small: ModelHandle) -> None:
    model = onnx.load(str(encoder_small.onnx_path))
    onnx.checker.check_model(model)
    assert not list(encoder_small.version_dir.glob("*.data"))
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == OPSET
    for tensor in model.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "axis1"]
    for tensor in model.graph.output:
        assert tensor.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_export_is_idempotent(encoder_small: ModelHandle) -> None:
    before = encoder_small.onnx_path.stat().st_mtime_ns
    outcome = export(encoder_small)
    assert isinstance(outcome, ExportOutcome) and not outcome.built
    assert stale_reasons(encoder_small) == []
    assert encoder_small.onnx_path.stat().st_mtime_ns == before


def test_changed_source_rebuilds_and_force_rebuilds(repo_root: Path, tmp_path: Path) -> None:
    repository = ModelRepository(_copy_model(repo_root, tmp_path, "encoder"))
    handle = repository.handle("encoder")
    first = export(handle)
    assert first.built and "small-fp32 not exported" in first.reasons
    assert not export(handle).built

    config = handle.directory / "config.toml"
    config.write_text(config.read_text() + "# a harmless edit still changes the source hash\n")
    assert any("changed" in r for r in stale_reasons(handle))
    second = export(handle)
    assert second.built
    assert second.manifest["source_sha256"] != first.manifest["source_sha256"]
    # Same model.py and weights seed: the weights come out byte for byte the same.
    assert second.manifest["weights_sha256"] == first.manifest["weights_sha256"]

    forced = export(handle, force=True)
    assert forced.built and forced.reasons == ["forced"]


def test_failed_parity_leaves_nothing_behind_then_concurrent_exports_build_once(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = ModelRepository(_copy_model(repo_root, tmp_path, "encoder"))
    handle = repository.handle("encoder")
    real_export_onnx = lab.export._export_onnx

    def broken(h: ModelHandle, path: Path, external_data: bool) -> None:
        real_export_onnx(h, path, external_data)
        model = onnx.load(str(path))
        (bias,) = [t for t in model.graph.initializer if t.name.endswith("classifier.bias")]
        shifted = onnx.numpy_helper.to_array(bias) + np.float32(0.5)
        bias.CopyFrom(onnx.numpy_helper.from_array(shifted, bias.name))
        onnx.save(model, str(path))  # an export that no longer matches the model

    monkeypatch.setattr(lab.export, "_export_onnx", broken)
    with pytest.raises(ExportError, match="parity check failed.*logits"):
        export(handle)
    assert not handle.onnx_path.exists() and not handle.manifest_path.exists()
    assert not [p for p in handle.version_dir.parent.iterdir() if "staging" in p.name]
    monkeypatch.setattr(lab.export, "_export_onnx", real_export_onnx)

    outcomes: list[ExportOutcome] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcomes.append(export(repository.handle("encoder")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(o.built for o in outcomes) == [False, True]
    assert stale_reasons(handle) == []


def test_fp16_export_keeps_the_fp32_io_contract(model_repository: ModelRepository) -> None:
    handle = model_repository.handle("encoder", "small", "fp16")
    ensure_exported(handle)
    session = ort.InferenceSession(str(handle.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)", "tensor(int64)"]
    assert [o.type for o in session.get_outputs()] == ["tensor(float)", "tensor(float)"]
    model = onnx.load(str(handle.onnx_path))
    types = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types  # the weights really are fp16 inside
    with OnnxRuntimeRunner().load(handle) as runner:
        result = verify(handle, runner, batch_size=8)
    assert result, result.summary()
    assert result.precision == "fp16"
    assert result.outputs["embedding"].max_abs_err > 1e-6  # computed in fp16, not fp32


def test_external_data_export_loads_and_verifies(repo_root: Path, tmp_path: Path) -> None:
    repository = ModelRepository(_copy_model(repo_root, tmp_path, "ranker", 16))
    handle = repository.handle("ranker")
    outcome = export(handle, external_data=True)
    data = handle.version_dir / "model.onnx.data"
    assert outcome.manifest["external_data"] == "model.onnx.data"
    assert outcome.manifest["external_data_sha256"] == sha256_file(data)
    assert handle.onnx_path.stat().st_size < 1_000_000 < data.stat().st_size
    names = {p.name for p in handle.version_dir.iterdir()}
    assert names == {"manifest.json", "model.onnx", "model.onnx.data"}
    with OnnxRuntimeRunner().load(handle) as runner:
        assert verify(handle, runner, batch_size=16)


def test_reference_set_stores_inputs_outputs_and_public_seed(ranker_small: ModelHandle) -> None:
    reference = load_reference(ranker_small)
    assert len(reference.samples) == len(reference.outputs) == 256
    assert reference.meta["seed"] == ranker_small.config.public_seed
    assert reference.meta["source_sha256"] == source_sha256(ranker_small)
    probabilities = np.concatenate([o["probability"] for o in reference.outputs])
    assert probabilities.dtype == np.float32 and probabilities.std() > 0.05


def test_missing_reference_is_a_clear_error(repo_root: Path, tmp_path: Path) -> None:
    handle = ModelRepository(_copy_model(repo_root, tmp_path, "encoder")).handle("encoder")
    with pytest.raises(ModelNotFound, match="servelab export encoder --size small"):
        load_reference(handle)


def test_big_export_without_the_memory_is_refused_before_writing_anything(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    handle = ModelRepository(_copy_model(repo_root, tmp_path, "encoder")).handle("encoder")
    monkeypatch.setattr(lab.export, "EXTERNAL_DATA_BYTES", 1 << 20)  # "big" from 1 MiB

    class Scarce:
        available = 1 << 20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Scarce())
    with pytest.raises(ExportError, match=r"needs about [\d.]+ GiB of free memory .* available"):
        export(handle)
    assert not handle.weights_path.exists() and not handle.onnx_path.exists()
