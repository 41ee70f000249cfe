"""Workloads: deterministic seeded samples with realistic distributions, the secret seed,
collation and fresh references."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

import lab.workload as workload_module
from lab.errors import ConfigError
from lab.export import load_reference
from lab.repository import ModelHandle
from lab.workload import SECRET_SEED_ENV, Workload, read_secret_seed


@pytest.fixture
def fresh_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Forget any secret seed read so far (restored after the test)."""
    monkeypatch.setattr(workload_module, "_secret_read", False)
    monkeypatch.setattr(workload_module, "_secret_seed", None)
    monkeypatch.setattr(workload_module, "_secret_error", None)
    monkeypatch.delenv(SECRET_SEED_ENV, raising=False)
    yield monkeypatch


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_samples_are_deterministic_per_seed_and_stream(encoder_small: ModelHandle) -> None:
    w = Workload(encoder_small, seed=7)
    first = w.samples(20)
    assert _same(first, Workload(encoder_small, seed=7).samples(20))
    assert _same(first[:5], w.samples(5))  # one stream drawn in order
    assert not _same(first, w.samples(20, stream="audit"))
    assert not _same(first, Workload(encoder_small, seed=8).samples(20))


def test_samples_are_distinct_and_have_batch_dim_one(ranker_small: ModelHandle) -> None:
    samples = Workload(ranker_small, seed=1).samples(300)
    keys = {tuple(s["sparse"][0]) + tuple(s["dense"][0]) for s in samples}
    assert len(keys) == 300
    for s in samples[:10]:
        assert s["dense"].shape == (1, 13) and s["dense"].dtype == np.float32
        assert s["sparse"].shape == (1, 26) and s["sparse"].dtype == np.int64


def test_encoder_lengths_are_long_tailed_and_token_ids_zipfian(encoder_small: ModelHandle) -> None:
    cfg = encoder_small.size_config
    samples = Workload(encoder_small, seed=3).samples(2000)
    lengths = np.array([s["input_ids"].shape[1] for s in samples])
    assert 40 <= np.median(lengths) <= 60
    assert np.percentile(lengths, 99) > 3 * np.median(lengths)  # a long tail
    assert lengths.max() == cfg.max_seq_len and lengths.min() >= 3
    for s in samples[:50]:
        assert s["input_ids"][0, 0] == 1 and s["input_ids"][0, -1] == 2  # [CLS] ... [SEP]
        assert (s["attention_mask"] == 1).all()
    words = np.concatenate([s["input_ids"][0, 1:-1] for s in samples])
    assert words.min() >= 4 and words.max() < cfg.vocab
    counts = np.sort(np.bincount(words))[::-1]
    # Zipf: the most frequent word is far more common than the hundredth.
    assert counts[0] > 20 * counts[99] > 0


def test_ranker_dense_is_heavy_tailed_with_missing_values_and_ids_zipfian(
    ranker_small: ModelHandle,
) -> None:
    cfg = ranker_small.size_config
    samples = Workload(ranker_small, seed=3).samples(3000)
    dense = np.concatenate([s["dense"] for s in samples])
    sparse = np.concatenate([s["sparse"] for s in samples])
    assert (dense >= 0).all() and np.isfinite(dense).all()
    missing = (dense == 0).mean(axis=0)
    assert missing.max() > 0.5 and missing.min() < 0.1  # some features mostly missing
    present = dense[:, 10][dense[:, 10] > 0]
    assert present.max() > 20 * np.median(present)  # log-normal tail
    assert (sparse >= 0).all() and (sparse < np.array(cfg.table_rows)).all()
    big = int(np.argmax(cfg.table_rows))
    _, counts = np.unique(sparse[:, big], return_counts=True)
    assert counts.max() > 0.02 * len(samples)  # a hot id in a 100k-row table
    assert len(counts) > 0.2 * len(samples)  # and a long tail of rare ones


def test_collate_pads_to_the_longest_with_pad_value(encoder_small: ModelHandle) -> None:
    w = Workload(encoder_small, seed=5)
    samples = w.samples(6)
    batch = w.collate(samples)
    longest = max(s["input_ids"].shape[1] for s in samples)
    assert batch["input_ids"].shape == (6, longest)
    for i, s in enumerate(samples):
        n = s["input_ids"].shape[1]
        assert np.array_equal(batch["input_ids"][i, :n], s["input_ids"][0])
        assert (batch["input_ids"][i, n:] == 0).all() and (
            batch["attention_mask"][i, n:] == 0
        ).all()
    with pytest.raises(ConfigError, match="empty"):
        w.collate([])


def test_reference_matches_the_stored_reference_set(encoder_small: ModelHandle) -> None:
    stored = load_reference(encoder_small)
    fresh = Workload(encoder_small).reference(stored.samples[:4])
    for got, want in zip(fresh, stored.outputs[:4]):
        assert got.keys() == want.keys() == {"embedding", "logits"}
        for name in got:
            assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6)


def test_reference_set_is_drawn_from_the_public_seed(ranker_small: ModelHandle) -> None:
    stored = load_reference(ranker_small)
    assert stored.meta["seed"] == ranker_small.config.public_seed
    assert len(stored.samples) == ranker_small.config.reference_samples
    redrawn = Workload(ranker_small, seed=stored.meta["seed"]).samples(5, stream="reference")
    assert _same(redrawn, stored.samples[:5])


def test_secret_seed_is_read_once_removed_and_never_shown(
    encoder_small: ModelHandle, fresh_secret: pytest.MonkeyPatch
) -> None:
    public = Workload(encoder_small).samples(8)
    assert Workload(encoder_small).seed_label == encoder_small.config.public_seed

    fresh_secret.setattr(workload_module, "_secret_read", False)
    fresh_secret.setenv(SECRET_SEED_ENV, "987654321")
    w = Workload(encoder_small)
    assert SECRET_SEED_ENV not in os.environ
    assert w.seed_label == "public+secret"
    assert "987654321" not in repr(w) and "987654321" not in str(w.seed_label)
    secret = w.samples(8)
    assert not _same(public, secret)
    assert _same(secret, Workload(encoder_small).samples(8))  # cached after the first read
    # An explicit seed ignores the secret (used for stored, public references).
    assert _same(Workload(encoder_small, seed=2026).samples(8), public)


def test_bad_secret_seed_is_a_config_error_without_the_value(
    fresh_secret: pytest.MonkeyPatch,
) -> None:
    fresh_secret.setenv(SECRET_SEED_ENV, "hunter2")
    with pytest.raises(ConfigError) as info:
        read_secret_seed()
    assert "hunter2" not in str(info.value) and SECRET_SEED_ENV in str(info.value)
    with pytest.raises(ConfigError):  # still an error on the next call, not a silent None
        read_secret_seed()


def test_checker_defaults_to_the_handle_precision(encoder_small: ModelHandle) -> None:
    fp32 = Workload(encoder_small).checker()
    fp16 = Workload(encoder_small).checker("fp16")
    assert fp32.precision == "fp32" and fp16.precision == "fp16"
    assert fp16.tolerances["embedding"].atol > fp32.tolerances["embedding"].atol
