"""The checker rejects wrong answers (perturbed, zero, constant, NaN/Inf, wrong shape or dtype)
and accepts the error a correct fp16 implementation makes under fp16 tolerances."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lab.check import DEFAULT_TOLERANCES, Checker, Tolerance
from lab.errors import CheckFailed, ConfigError
from lab.export import load_reference
from lab.repository import ModelHandle, TensorSpec

EMB = TensorSpec("embedding", "float32", (-1, 32))
LOGITS = TensorSpec("logits", "float32", (-1, 6))
PROB = TensorSpec("probability", "float32", (-1, 1))

FP32 = {
    "embedding": Tolerance(atol=1e-5, rtol=1e-4, min_cosine=0.99999),
    "logits": Tolerance(atol=1e-4, rtol=1e-4, min_top1_agreement=1.0),
}


def _reference(n: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    logits = (rng.standard_normal((n, 6)) * 2).astype(np.float32)
    return {"embedding": emb, "logits": logits}


def _checker(tolerances: dict[str, Tolerance] | None = None) -> Checker:
    return Checker([EMB, LOGITS], tolerances or FP32, "fp32", "toy")


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = next(iter(batch.values())).shape[0]
    return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(n)]


def test_identical_outputs_pass_as_dict_or_per_sample_list() -> None:
    expected = _reference()
    assert _checker().check(expected, expected).passed
    result = _checker().check(_rows(expected), _rows(expected))
    assert result and result.failures == [] and result.failing_samples == []


def test_perturbation_beyond_tolerance_names_output_samples_and_passing_tolerance() -> None:
    expected = _reference()
    actual = {k: v.copy() for k, v in expected.items()}
    actual["logits"][[3, 11]] += 0.05
    result = _checker().check(actual, expected)
    assert not result
    assert result.outputs["embedding"].passed
    logits = result.outputs["logits"]
    assert not logits.passed
    assert logits.failing_samples == [3, 11] == result.failing_samples
    assert logits.max_abs_err == pytest.approx(0.05, rel=1e-3)
    # The tolerance that would have passed really does pass, and just below it does not.
    assert logits.atol_to_pass is not None
    looser = dict(FP32, logits=Tolerance(atol=logits.atol_to_pass * 1.001, rtol=1e-4))
    assert _checker(looser).check(actual, expected).outputs["logits"].passed
    tighter = dict(FP32, logits=Tolerance(atol=logits.atol_to_pass * 0.99, rtol=1e-4))
    assert not _checker(tighter).check(actual, expected).outputs["logits"].passed
    message = " ".join(result.failures)
    assert "logits" in message and "samples 3, 11" in message and "would pass with atol" in message


def test_rtol_to_pass_is_reported_and_sufficient() -> None:
    expected = _reference()
    actual = {k: v * np.float32(1.01) for k, v in expected.items()}
    result = _checker().check(actual, expected)
    rtol = result.outputs["logits"].rtol_to_pass
    assert rtol is not None and 0.009 < rtol < 0.011
    looser = {
        "embedding": Tolerance(atol=1e-5, rtol=result.outputs["embedding"].rtol_to_pass * 1.01),  # type: ignore[operator]
        "logits": Tolerance(atol=1e-4, rtol=rtol * 1.01),
    }
    assert _checker(looser).check(actual, expected)


def test_small_error_within_tolerance_passes() -> None:
    expected = _reference()
    actual = {k: v + np.float32(2e-6) for k, v in expected.items()}
    assert _checker().check(actual, expected)


def test_all_zero_output_fails_even_under_a_loose_tolerance() -> None:
    expected = _reference()
    actual = dict(expected, embedding=np.zeros_like(expected["embedding"]))
    loose = dict(FP32, embedding=Tolerance(atol=1.0, rtol=0.0))
    assert np.allclose(actual["embedding"], expected["embedding"], atol=1.0)
    result = _checker(loose).check(actual, expected)
    assert not result
    assert any("all zeros" in f for f in result.failures)


def test_constant_across_samples_fails_where_allclose_passes() -> None:
    rng = np.random.default_rng(1)
    expected = {"probability": rng.uniform(0.2, 0.3, (50, 1)).astype(np.float32)}
    actual = {"probability": np.full((50, 1), 0.25, np.float32)}
    tolerances = {"probability": Tolerance(atol=0.1, rtol=0.0, max_abs_error=0.1)}
    checker = Checker([PROB], tolerances, "fp32", "toy")
    assert np.allclose(actual["probability"], expected["probability"], atol=0.1)
    result = checker.check(actual, expected)
    assert not result
    assert any("does not vary across samples" in f for f in result.failures)
    # A real answer with the same tolerance passes: the guard is about the constant.
    assert checker.check({"probability": expected["probability"] + 0.01}, expected)


def test_constant_within_a_sample_fails() -> None:
    expected = _reference()
    actual = {k: v.copy() for k, v in expected.items()}
    actual["embedding"][5] = actual["embedding"][5].mean()
    loose = dict(FP32, embedding=Tolerance(atol=1.0, rtol=0.0))
    result = _checker(loose).check(actual, expected)
    assert not result
    assert result.outputs["embedding"].failing_samples == [5]
    assert any("constant within 1 of 24 samples" in f for f in result.failures)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_fail(bad: float) -> None:
    expected = _reference()
    actual = {k: v.copy() for k, v in expected.items()}
    actual["logits"][7, 2] = bad
    result = _checker().check(actual, expected)
    assert not result
    assert result.outputs["logits"].failing_samples == [7]
    kind = "NaN" if np.isnan(bad) else "Inf"
    assert any(f"{kind} in 1 of 24 samples" in f for f in result.failures)


def test_wrong_shape_fails_with_expected_and_actual_shape() -> None:
    expected = _reference()
    actual = dict(expected, logits=expected["logits"][:, :5])
    result = _checker().check(actual, expected)
    assert not result
    assert any("logits: shape [1, 5], expected [1, 6]" in f for f in result.failures)


def test_wrong_dtype_fails_even_when_values_match() -> None:
    expected = _reference()
    actual = dict(expected, embedding=expected["embedding"].astype(np.float64))
    result = _checker().check(actual, expected)
    assert not result
    assert any("embedding: dtype float64, expected float32" in f for f in result.failures)


def test_missing_output_and_sample_count_mismatch_fail() -> None:
    expected = _reference()
    missing = _checker().check({"embedding": expected["embedding"]}, expected)
    assert any("logits: missing from the actual outputs" in f for f in missing.failures)
    short = _checker().check(_rows(expected)[:-1], _rows(expected))
    assert not short and any("got outputs for 23 samples, expected 24" in f for f in short.failures)
    empty = _checker().check([], [])
    assert not empty and "nothing to check" in empty.failures[0]


def test_cosine_similarity_rejects_a_drifted_embedding_that_passes_elementwise() -> None:
    expected = _reference()
    rng = np.random.default_rng(2)
    drifted = expected["embedding"] + rng.standard_normal(expected["embedding"].shape) * 0.03
    actual = dict(expected, embedding=drifted.astype(np.float32))
    tolerances = dict(FP32, embedding=Tolerance(atol=0.2, rtol=0.0, min_cosine=0.999))
    result = _checker(tolerances).check(actual, expected)
    assert not result
    measure = result.outputs["embedding"].measures[0]
    assert measure.name == "min_cosine" and not measure.passed and measure.value < 0.999
    assert any("cosine similarity" in f for f in result.failures)


def test_top1_agreement_rejects_swapped_classes_but_tolerates_reference_ties() -> None:
    expected = _reference()
    actual = {k: v.copy() for k, v in expected.items()}
    top = expected["logits"].argmax(axis=1)
    actual["logits"][0] = -actual["logits"][0]  # a different winner on sample 0
    loose = dict(FP32, logits=Tolerance(atol=0.5, rtol=10.0, min_top1_agreement=1.0))
    result = _checker(loose).check(actual, expected)
    winner = actual["logits"][0].argmax()
    assert winner != top[0]
    assert expected["logits"][0, top[0]] - expected["logits"][0, winner] > 0.5  # not a tie
    assert result.outputs["logits"].measures[0].value == pytest.approx(23 / 24)
    assert not result and result.outputs["logits"].failing_samples == [0]

    tie = {k: v.copy() for k, v in expected.items()}
    tie["logits"][:, :2] = 3.0  # classes 0 and 1 tie at the top
    swapped = {k: v.copy() for k, v in tie.items()}
    swapped["logits"][:, 1] += 5e-5  # within atol: a different but equally right winner
    assert _checker().check(swapped, tie)


def test_max_abs_error_on_probability() -> None:
    rng = np.random.default_rng(3)
    expected = {"probability": rng.uniform(0.05, 0.95, (40, 1)).astype(np.float32)}
    actual = {"probability": expected["probability"].copy()}
    actual["probability"][9] += 0.02
    tolerances = {"probability": Tolerance(atol=0.05, rtol=0.0, max_abs_error=0.01)}
    result = Checker([PROB], tolerances, "fp32").check(actual, expected)
    assert not result and result.failing_samples == [9]
    assert any("absolute error" in f and "sample 9" in f for f in result.failures)


def test_result_serialises_to_json_and_summarises_as_a_table() -> None:
    expected = _reference()
    actual = dict(expected, logits=np.full_like(expected["logits"], np.nan))
    result = _checker().check(actual, expected)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is False
    assert data["outputs"]["logits"]["failing_sample_count"] == 24
    assert len(data["outputs"]["logits"]["failing_samples"]) == 20  # capped
    lines = result.summary().splitlines()
    assert lines[0].endswith("FAIL")
    assert any(line.startswith("embedding") and "PASS" in line for line in lines)
    assert any(line.startswith("logits") and "FAIL" in line for line in lines)
    with pytest.raises(CheckFailed, match="logits: NaN in 24 of 24 samples") as info:
        result.raise_if_failed()
    assert info.value.exit_code == 1
    assert _checker().check(expected, expected).raise_if_failed().passed


def test_unknown_or_negative_tolerance_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown tolerance key.*atoll"):
        Tolerance.from_config("fp32", {"atoll": 1e-3}, "toy")
    with pytest.raises(ConfigError, match="non-negative"):
        Tolerance.from_config("fp32", {"atol": -1}, "toy")


def test_fp16_defaults_are_looser_than_fp32() -> None:
    fp32 = Tolerance.from_config("fp32", {}, "toy")
    fp16 = Tolerance.from_config("fp16", {}, "toy")
    assert fp16.atol > fp32.atol and fp16.rtol > fp32.rtol
    assert DEFAULT_TOLERANCES["fp16"] != DEFAULT_TOLERANCES["fp32"]


def _fp16_roundtrip(outputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The error of computing in fp16: each value rounded to fp16 and a relative wobble of a
    few fp16 ulps (2**-10), as a correct fp16 kernel produces."""
    rng = np.random.default_rng(4)
    wobbled = []
    for sample in outputs:
        row = {}
        for name, value in sample.items():
            noise = 1 + rng.uniform(-3, 3, value.shape) * 2.0**-11
            row[name] = (value.astype(np.float16).astype(np.float32) * noise).astype(np.float32)
        wobbled.append(row)
    return wobbled


def test_fp16_level_error_passes_fp16_tolerances_but_not_fp32(encoder_small: ModelHandle) -> None:
    expected = load_reference(encoder_small).outputs
    actual = _fp16_roundtrip(expected)
    fp16 = Checker.for_model(encoder_small, "fp16").check(actual, expected)
    assert fp16, fp16.summary()
    fp32 = Checker.for_model(encoder_small, "fp32").check(actual, expected)
    assert not fp32
    assert not fp32.outputs["embedding"].passed


def test_ranker_fp16_level_error_passes_fp16_tolerances_but_not_fp32(
    ranker_small: ModelHandle,
) -> None:
    expected = load_reference(ranker_small).outputs
    actual = _fp16_roundtrip(expected)
    assert Checker.for_model(ranker_small, "fp16").check(actual, expected)
    assert not Checker.for_model(ranker_small, "fp32").check(actual, expected)
