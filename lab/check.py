"""The checker: are a runner's outputs the model's outputs?

`Checker.check(actual, expected)` compares outputs output by output and returns a
`CheckResult` that is truthy only when everything passed. For each output it applies:

- contract guards: the output is present, float32 (the runner contract), the right shape;
- NaN / Inf: any non-finite value fails;
- elementwise tolerance: an element fails where |a - e| > atol + rtol * |e|
  (numpy.isclose semantics; atol/rtol per output and precision, from config.toml);
- degenerate-output guards that a loose allclose misses: all zeros, an output constant
  within a sample, or one that does not vary across samples while the reference does
  (its spread falls under `min_spread_ratio` of the reference's);
- model-level measures where configured: `min_cosine` (per-sample cosine similarity),
  `min_top1_agreement` (share of samples whose arg-max agrees; a reference tie within
  atol counts as agreement), `max_abs_error` (largest absolute error, e.g. on a probability).

The result says which output failed, on which samples, by how much, and which atol/rtol
would have passed. Tolerances missing from the config fall back to per-precision defaults
(fp16's are looser than fp32's, never fp32's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from lab.errors import CheckFailed, ConfigError
from lab.repository import ModelHandle, TensorSpec

Tensors = Mapping[str, np.ndarray]
Outputs = Sequence[Tensors] | Tensors

# Defaults when config.toml gives no value (KernelBench uses 1e-4 for fp32, 1e-2 for fp16).
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"atol": 1e-4, "rtol": 1e-4},
    "tf32": {"atol": 2e-3, "rtol": 5e-3},
    "fp16": {"atol": 1e-2, "rtol": 1e-2},
    "bf16": {"atol": 5e-2, "rtol": 5e-2},
}
DEFAULT_MIN_SPREAD_RATIO = 0.1
SAMPLES_SHOWN = 20  # failing sample indices listed in messages and JSON


@dataclass(frozen=True)
class Tolerance:
    """The tolerances of one output at one precision."""

    atol: float
    rtol: float
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    max_abs_error: float | None = None
    min_spread_ratio: float = DEFAULT_MIN_SPREAD_RATIO

    @classmethod
    def from_config(cls, precision: str, values: Mapping[str, Any], where: str) -> Tolerance:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown tolerance key(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        merged: dict[str, Any] = dict(DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"]))
        merged.update(values)
        try:
            parsed = {k: float(v) for k, v in merged.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: tolerances must be numbers, got {dict(values)}") from None
        if any(v < 0 or math.isnan(v) for v in parsed.values()):
            raise ConfigError(f"{where}: tolerances must be non-negative numbers")
        return cls(**parsed)


@dataclass
class Measure:
    """A model-level measure: its value, its limit and which way is better."""

    name: str
    value: float
    limit: float
    higher_is_better: bool
    passed: bool
    worst_sample: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": _json_float(self.value),
            "limit": self.limit,
            "direction": "higher" if self.higher_is_better else "lower",
            "passed": self.passed,
            "worst_sample": self.worst_sample,
        }


@dataclass
class OutputCheck:
    """The verdict on one output."""

    name: str
    tolerance: Tolerance
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    failing_samples: list[int] = field(default_factory=list)
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    worst_sample: int | None = None
    atol_to_pass: float | None = None  # the atol that would pass at the configured rtol
    rtol_to_pass: float | None = None  # the rtol that would pass at the configured atol
    measures: list[Measure] = field(default_factory=list)

    def fail(self, message: str, samples: Sequence[int] | np.ndarray = ()) -> None:
        self.passed = False
        self.failures.append(f"{self.name}: {message}")
        self.failing_samples = sorted(set(self.failing_samples) | {int(i) for i in samples})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "failures": list(self.failures),
            "failing_samples": self.failing_samples[:SAMPLES_SHOWN],
            "failing_sample_count": len(self.failing_samples),
            "max_abs_err": _json_float(self.max_abs_err),
            "max_rel_err": _json_float(self.max_rel_err),
            "worst_sample": self.worst_sample,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "atol_to_pass": _json_float(self.atol_to_pass),
            "rtol_to_pass": _json_float(self.rtol_to_pass),
            "measures": [m.to_dict() for m in self.measures],
        }


@dataclass
class CheckResult:
    """Truthy iff every output passed. `failures` are human-readable reasons."""

    outputs: dict[str, OutputCheck]
    n_samples: int
    precision: str
    model: str = ""
    extra_failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.extra_failures and all(o.passed for o in self.outputs.values())

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> list[str]:
        reasons = list(self.extra_failures)
        for output in self.outputs.values():
            reasons.extend(output.failures)
        return reasons

    @property
    def failing_samples(self) -> list[int]:
        union: set[int] = set()
        for output in self.outputs.values():
            union.update(output.failing_samples)
        return sorted(union)

    def raise_if_failed(self) -> CheckResult:
        """Raise CheckFailed (exit 1) with the reasons when the check failed; else return self."""
        if not self.passed:
            raise CheckFailed(f"{self.model} {self.precision}: " + "; ".join(self.failures))
        return self

    def to_dict(self) -> dict[str, Any]:
        failing = self.failing_samples
        return {
            "passed": self.passed,
            "model": self.model,
            "precision": self.precision,
            "samples": self.n_samples,
            "failures": self.failures,
            "failing_samples": failing[:SAMPLES_SHOWN],
            "failing_sample_count": len(failing),
            "outputs": {name: o.to_dict() for name, o in self.outputs.items()},
        }

    def summary(self) -> str:
        """A plain-text table, one row per output, then the reasons for any failure."""
        verdict = "PASS" if self.passed else "FAIL"
        title = f"check {self.model} {self.precision}".replace("  ", " ").strip()
        lines = [f"{title} on {self.n_samples} samples: {verdict}"]
        header = ("output", "result", "max_abs_err", "max_rel_err", "worst", "failing")
        rows = [header + ("atol/rtol", "to pass", "measures")]
        for o in self.outputs.values():
            rows.append(
                (
                    o.name,
                    "PASS" if o.passed else "FAIL",
                    _fmt(o.max_abs_err),
                    _fmt(o.max_rel_err),
                    "-" if o.worst_sample is None else str(o.worst_sample),
                    f"{len(o.failing_samples)}/{self.n_samples}",
                    f"{o.tolerance.atol:g}/{o.tolerance.rtol:g}",
                    f"{_fmt(o.atol_to_pass)}/{_fmt(o.rtol_to_pass)}",
                    ", ".join(_fmt_measure(m) for m in o.measures) or "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        lines.extend(f"  - {reason}" for reason in self.failures)
        return "\n".join(lines)


def _json_float(value: float | None) -> float | str | None:
    if value is None:
        return None
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return float(value)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.2e}" if value and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.4g}"


def _fmt_measure(m: Measure) -> str:
    op = ">=" if m.higher_is_better else "<="
    mark = "" if m.passed else " FAIL"
    return f"{m.name} {m.value:.8g} ({op} {m.limit:g}){mark}"


def _samples_text(samples: Sequence[int] | np.ndarray) -> str:
    items = [int(i) for i in samples]
    shown = ", ".join(str(i) for i in items[:SAMPLES_SHOWN])
    more = len(items) - SAMPLES_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")


def _per_sample(outputs: Outputs, name: str) -> list[np.ndarray] | None:
    """One output as a list of per-sample arrays, each keeping a batch dim of 1."""
    if isinstance(outputs, Mapping):
        if name not in outputs:
            return None
        array = np.asarray(outputs[name])
        if array.ndim == 0:
            return [array.reshape(1)]
        return [array[i : i + 1] for i in range(array.shape[0])]
    parts = []
    for sample in outputs:
        if name not in sample:
            return None
        parts.append(np.asarray(sample[name]))
    return parts


def _count(outputs: Outputs) -> int:
    if isinstance(outputs, Mapping):
        for value in outputs.values():
            array = np.asarray(value)
            return int(array.shape[0]) if array.ndim else 1
        return 0
    return len(outputs)


class Checker:
    """Compares outputs with per-output tolerances. Build one with `for_model`."""

    def __init__(
        self,
        outputs: Sequence[TensorSpec],
        tolerances: Mapping[str, Tolerance],
        precision: str = "fp32",
        model: str = "",
    ) -> None:
        self.outputs = tuple(outputs)
        self.precision = precision
        self.model = model
        default = Tolerance.from_config(precision, {}, "defaults")
        self.tolerances = {s.name: tolerances.get(s.name, default) for s in self.outputs}

    @classmethod
    def for_model(cls, handle: ModelHandle, precision: str | None = None) -> Checker:
        precision = precision or handle.precision
        table = handle.config.tolerances.get(precision, {})
        tolerances = {
            spec.name: Tolerance.from_config(
                precision,
                table.get(spec.name, {}),
                f"{handle.name} config.toml [tolerance.{precision}.{spec.name}]",
            )
            for spec in handle.outputs
        }
        return cls(handle.outputs, tolerances, precision, f"{handle.name}/{handle.size}")

    def check(self, actual: Outputs, expected: Outputs) -> CheckResult:
        result = CheckResult({}, _count(expected), self.precision, self.model)
        n_actual = _count(actual)
        if result.n_samples == 0:
            result.extra_failures.append("nothing to check: the expected outputs are empty")
        elif n_actual != result.n_samples:
            result.extra_failures.append(
                f"got outputs for {n_actual} samples, expected {result.n_samples}"
            )
        for spec in self.outputs:
            report = OutputCheck(spec.name, self.tolerances[spec.name])
            result.outputs[spec.name] = report
            if not result.extra_failures:
                self._check_output(report, spec, actual, expected)
        return result

    # ----- one output ------------------------------------------------------------------
    def _check_output(
        self, report: OutputCheck, spec: TensorSpec, actual: Outputs, expected: Outputs
    ) -> None:
        everyone = range(_count(expected))
        got = _per_sample(actual, spec.name)
        want = _per_sample(expected, spec.name)
        if want is None:
            report.fail("missing from the expected outputs (reference)", everyone)
            return
        if got is None:
            report.fail("missing from the actual outputs", everyone)
            return
        dtypes = sorted({str(a.dtype) for a in got})
        if dtypes != [spec.dtype]:
            report.fail(f"dtype {', '.join(dtypes)}, expected {spec.dtype}", everyone)
            if not all(np.issubdtype(a.dtype, np.number) for a in got):
                return
        wrong = [i for i, (a, e) in enumerate(zip(got, want)) if a.shape != e.shape]
        if wrong:
            i = wrong[0]
            report.fail(
                f"shape {list(got[i].shape)}, expected {list(want[i].shape)} "
                f"(per sample; {len(wrong)} samples: {_samples_text(wrong)})",
                wrong,
            )
            return
        a = np.concatenate(got).astype(np.float64)  # (N, ...)
        e = np.concatenate(want).astype(np.float64)
        n = a.shape[0]
        a2 = a.reshape(n, -1)
        e2 = e.reshape(n, -1)

        finite = np.isfinite(a2)
        bad_samples = np.flatnonzero(~finite.all(axis=1))
        if bad_samples.size:
            present = (("NaN", np.isnan(a2).any()), ("Inf", np.isinf(a2).any()))
            kinds = "/".join(kind for kind, found in present if found)
            report.fail(
                f"{kinds} in {bad_samples.size} of {n} samples: {_samples_text(bad_samples)}",
                bad_samples,
            )
        if not np.isfinite(e2).all():
            report.fail("the reference itself contains NaN/Inf", everyone)
            return

        self._elementwise(report, a2, e2, finite)
        if finite.all():
            self._degenerate(report, a2, e2)
            self._measures(report, a2, e2)

    def _elementwise(
        self, report: OutputCheck, a: np.ndarray, e: np.ndarray, finite: np.ndarray
    ) -> None:
        tol = report.tolerance
        diff = np.where(finite, np.abs(a - e), np.inf)
        magnitude = np.abs(e)
        allowed = tol.atol + tol.rtol * magnitude
        bad = diff > allowed
        report.max_abs_err = float(diff.max()) if diff.size else 0.0
        big = magnitude >= max(tol.atol, np.finfo(np.float32).tiny)
        report.max_rel_err = float((diff[big] / magnitude[big]).max()) if big.any() else 0.0
        report.atol_to_pass = float(max((diff - tol.rtol * magnitude).max(initial=0.0), 0.0))
        over = diff > tol.atol
        if (over & (magnitude == 0)).any():
            report.rtol_to_pass = math.inf
        else:
            needed = np.where(over, (diff - tol.atol) / np.where(magnitude == 0, 1, magnitude), 0)
            report.rtol_to_pass = float(needed.max(initial=0.0))
        excess = np.where(allowed > 0, diff / np.where(allowed > 0, allowed, 1), diff)
        report.worst_sample = int(excess.max(axis=1).argmax()) if excess.size else None
        failing = np.flatnonzero(bad.any(axis=1))
        if failing.size:
            n_bad = int(bad.sum())
            report.fail(
                f"{failing.size} of {a.shape[0]} samples out of tolerance "
                f"(|a-e| > atol {tol.atol:g} + rtol {tol.rtol:g}*|e| in {n_bad} of {a.size} "
                f"elements): max abs err {_fmt(report.max_abs_err)} at sample "
                f"{report.worst_sample}; would pass with atol >= {_fmt(report.atol_to_pass)} "
                f"or rtol >= {_fmt(report.rtol_to_pass)}; samples {_samples_text(failing)}",
                failing,
            )

    def _degenerate(self, report: OutputCheck, a: np.ndarray, e: np.ndarray) -> None:
        ratio = report.tolerance.min_spread_ratio
        n = a.shape[0]
        if not a.any() and e.any():
            report.fail("all zeros while the reference is not", range(n))
            return
        if a.shape[1] > 1:  # constant within a sample
            spread_a = a.std(axis=1)
            spread_e = e.std(axis=1)
            flat = np.flatnonzero((spread_e > 0) & (spread_a <= ratio * spread_e))
            if flat.size:
                report.fail(
                    f"constant within {flat.size} of {n} samples (spread "
                    f"{spread_a[flat[0]]:.3g} vs reference {spread_e[flat[0]]:.3g} at sample "
                    f"{flat[0]}): samples {_samples_text(flat)}",
                    flat,
                )
        if n > 1 and ratio > 0:  # constant across samples
            spread_a_all = float(a.std(axis=0).mean())
            spread_e_all = float(e.std(axis=0).mean())
            if spread_e_all > 0 and spread_a_all <= ratio * spread_e_all:
                report.fail(
                    f"does not vary across samples (mean spread {spread_a_all:.3g}, "
                    f"reference {spread_e_all:.3g}, minimum ratio {ratio:g}): a constant answer",
                    range(n),
                )

    def _measures(self, report: OutputCheck, a: np.ndarray, e: np.ndarray) -> None:
        tol = report.tolerance
        if tol.min_cosine is not None:
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(e, axis=1)
            dots = (a * e).sum(axis=1)
            cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 0.0)
            worst = int(cosine.argmin())
            low = np.flatnonzero(cosine < tol.min_cosine)
            measure = Measure(
                "min_cosine", float(cosine[worst]), tol.min_cosine, True, not low.size, worst
            )
            report.measures.append(measure)
            if low.size:
                report.fail(
                    f"cosine similarity {measure.value:.6f} at sample {worst} is below "
                    f"{tol.min_cosine:g} ({low.size} samples: {_samples_text(low)})",
                    low,
                )
        if tol.min_top1_agreement is not None:
            top_a = a.argmax(axis=1)
            rows = np.arange(a.shape[0])
            # A reference tie within atol is not a disagreement.
            agree = (top_a == e.argmax(axis=1)) | (e[rows, top_a] >= e.max(axis=1) - tol.atol)
            rate = float(agree.mean())
            off = np.flatnonzero(~agree)
            passed = rate >= tol.min_top1_agreement
            report.measures.append(
                Measure(
                    "top1_agreement",
                    rate,
                    tol.min_top1_agreement,
                    True,
                    passed,
                    int(off[0]) if off.size else None,
                )
            )
            if not passed:
                report.fail(
                    f"top-1 agreement {rate:.4f} is below {tol.min_top1_agreement:g} "
                    f"({off.size} samples disagree: {_samples_text(off)})",
                    off,
                )
        if tol.max_abs_error is not None:
            per_sample = np.abs(a - e).max(axis=1)
            worst = int(per_sample.argmax())
            high = np.flatnonzero(per_sample > tol.max_abs_error)
            report.measures.append(
                Measure(
                    "max_abs_error",
                    float(per_sample[worst]),
                    tol.max_abs_error,
                    False,
                    not high.size,
                    worst,
                )
            )
            if high.size:
                report.fail(
                    f"absolute error {per_sample[worst]:.3g} at sample {worst} exceeds "
                    f"{tol.max_abs_error:g} ({high.size} samples: {_samples_text(high)})",
                    high,
                )
