"""The model definitions: sizes from the issue, deterministic weights, padding that changes
nothing, plain embedding lookups in the exported ranker."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from safetensors.numpy import load_file

from lab.check import Checker
from lab.export import load_reference, read_manifest
from lab.repository import PRECISIONS, ModelHandle, ModelRepository
from lab.weights import generate, load_module, sha256_file
from lab.workload import Workload


def test_sizes_follow_the_issue(model_repository: ModelRepository) -> None:
    encoder = model_repository.module("encoder").SIZES
    small, base = encoder["small"], encoder["base"]
    assert (small.layers, small.hidden, small.heads, small.ffn) == (4, 256, 4, 1024)
    assert (small.vocab, small.max_seq_len) == (8192, 256)
    assert (base.layers, base.hidden, base.heads, base.ffn) == (12, 768, 12, 3072)
    assert (base.vocab, base.max_seq_len) == (30522, 512)
    ranker = model_repository.module("ranker").SIZES
    assert len(ranker["small"].table_rows) == 26 and max(ranker["small"].table_rows) <= 100_000
    assert ranker["small"].dim == 16
    assert ranker["large"].total_rows >= 20_000_000 and ranker["large"].dim == 128


def test_configs_declare_io_batching_slo_and_tolerances(model_repository: ModelRepository) -> None:
    encoder = model_repository.handle("encoder")
    assert [(s.name, s.datatype, s.shape) for s in encoder.inputs] == [
        ("input_ids", "INT64", (-1, -1)),
        ("attention_mask", "INT64", (-1, -1)),
    ]
    assert [(s.name, s.shape) for s in encoder.outputs] == [
        ("embedding", (-1, 256)),
        ("logits", (-1, 8)),
    ]
    assert (encoder.config.slo_ms, encoder.config.max_batch_size) == (130.0, 64)
    ranker = model_repository.handle("ranker")
    assert [(s.name, s.datatype, s.shape) for s in ranker.inputs] == [
        ("dense", "FP32", (-1, 13)),
        ("sparse", "INT64", (-1, 26)),
    ]
    assert ranker.config.slo_ms == 60.0
    for handle in (encoder, ranker):
        for precision in PRECISIONS:
            assert set(handle.config.tolerances[precision]) == {s.name for s in handle.outputs}
            Checker.for_model(handle, precision)  # every key is known


def test_weights_are_deterministic_and_independent_of_torch_rng(
    encoder_small: ModelHandle,
) -> None:
    torch.manual_seed(1)
    first = generate(encoder_small)
    torch.manual_seed(2)
    second = generate(encoder_small)
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    stored = load_file(str(encoder_small.weights_path))
    assert all(np.array_equal(first[k], stored[k]) for k in first)
    manifest = read_manifest(encoder_small)
    assert manifest and manifest["weights_sha256"] == sha256_file(encoder_small.weights_path)


def test_encoder_embedding_is_unit_length_and_varies(encoder_small: ModelHandle) -> None:
    outputs = load_reference(encoder_small).outputs
    embeddings = np.concatenate([o["embedding"] for o in outputs])
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert embeddings.std(axis=0).mean() > 0.01
    logits = np.concatenate([o["logits"] for o in outputs])
    assert len(set(logits.argmax(axis=1))) > 1


def _torch_batch(module: torch.nn.Module, batch: dict[str, np.ndarray], names: list[str]) -> list:
    with torch.inference_mode():
        values = module(*(torch.from_numpy(batch[n]) for n in names))
    return [v.numpy() for v in values]


def test_padding_does_not_change_encoder_outputs(encoder_small: ModelHandle) -> None:
    reference = load_reference(encoder_small)
    samples, expected = reference.samples[:12], reference.outputs[:12]
    lengths = [s["input_ids"].shape[1] for s in samples]
    assert max(lengths) > 2 * min(lengths)  # real padding happens in this batch
    workload = Workload(encoder_small)
    module = load_module(encoder_small)
    names = [s.name for s in encoder_small.inputs]
    batch = workload.collate(samples)
    embedding, logits = _torch_batch(module, batch, names)
    checker = Checker.for_model(encoder_small, "fp32")
    assert checker.check({"embedding": embedding, "logits": logits}, expected)
    # The check is not vacuous: treating the padding as real tokens is caught.
    unmasked = dict(batch, attention_mask=np.ones_like(batch["attention_mask"]))
    embedding, logits = _torch_batch(module, unmasked, names)
    result = checker.check({"embedding": embedding, "logits": logits}, expected)
    assert not result
    longest = int(np.argmax(lengths))
    assert longest not in result.failing_samples  # the unpadded sample still matches


def test_ranker_batch_matches_per_sample_reference(ranker_small: ModelHandle) -> None:
    reference = load_reference(ranker_small)
    batch = Workload(ranker_small).collate(reference.samples[:64])
    (probability,) = _torch_batch(load_module(ranker_small), batch, ["dense", "sparse"])
    assert ((probability > 0) & (probability < 1)).all()
    assert Checker.for_model(ranker_small).check(
        {"probability": probability}, reference.outputs[:64]
    )


def test_exported_ranker_uses_plain_gathers_not_loops(ranker_small: ModelHandle) -> None:
    graph = onnx.load(str(ranker_small.onnx_path), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    assert "Loop" not in ops and "Scan" not in ops
    assert ops.count("Gather") >= 26


def test_ranker_rejects_an_inconsistent_config(model_repository: ModelRepository) -> None:
    module = model_repository.module("ranker")
    cfg = module.SIZES["small"]
    with pytest.raises(ValueError, match="bottom must end at dim"):
        module.build(replace(cfg, bottom=(64, 8)))
