"""Value constraints on an input tensor, declared in the model's config.toml.

    [[input]]
    name = "input_ids"
    dims = [-1]
    max_dims = ["max_seq_len"]   # at most this many along each axis (-1: no limit)
    min = 0                      # smallest allowed value (inclusive)
    below = "vocab"              # every value is < this (exclusive)
    finite = true                # floats only: no NaN, no infinity

A bound is a number or the name of a field of the size's dataclass config (`vocab`). A field
that holds one number per position of the last axis (the ranker's `table_rows`) bounds each
column separately: column j must lie in [min, below[j]).

`ValueLimits.check` is the one place values are checked: the server's codec (before the
batcher), the runner base class and therefore the harness all call it through
`TensorSpec.check_values`. A violation is one InputError naming the input, the first offending
index and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lab.errors import ConfigError, InputError


def _number(text: float) -> str:
    return str(int(text)) if float(text).is_integer() else repr(float(text))


@dataclass(frozen=True)
class ValueLimits:
    """Allowed values: [low, high) (high per column of the last axis when it has several)."""

    low: float | None = None
    high: tuple[float, ...] = ()  # empty: no upper bound; one bound, or one per column
    finite: bool = False
    _high_array: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.high:
            object.__setattr__(self, "_high_array", np.asarray(self.high))

    def describe(self, column: int = 0) -> str:
        low = "-inf" if self.low is None else _number(self.low)
        if not self.high:
            return f"[{low}, inf)"
        high = self.high[column] if len(self.high) > 1 else self.high[0]
        return f"[{low}, {_number(high)})"

    def check(self, name: str, array: np.ndarray) -> None:
        """Raise InputError at the first value outside the limits."""
        if array.size == 0:
            return
        if self.finite and array.dtype.kind == "f":
            bad = ~np.isfinite(array)
            if bad.any():
                self._fail(name, array, bad, "is not finite (allowed: finite numbers)")
        if self.low is not None:
            bad_low = array < self.low
            if bad_low.any():
                self._fail(name, array, bad_low, "")
        if self._high_array is not None:
            bad_high = array >= self._high_array
            if bad_high.any():
                self._fail(name, array, bad_high, "")

    def _fail(self, name: str, array: np.ndarray, bad: np.ndarray, what: str) -> None:
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        value = array[index]
        column = index[-1] if len(self.high) > 1 else 0
        detail = what or f"is outside the allowed range {self.describe(column)}"
        raise InputError(f"input {name!r} at index {list(index)}: value {value} {detail}")


def _resolve(value: Any, size_cfg: Any, where: str) -> tuple[float, ...]:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: a bound must be a number or a size-config field, got {value}")
    if isinstance(value, (int, float)):
        return (value,)
    if isinstance(value, str):
        if not hasattr(size_cfg, value):
            raise ConfigError(f"{where}: bound {value!r} is not a field of the size config")
        resolved = getattr(size_cfg, value)
        if isinstance(resolved, (tuple, list)):
            return tuple(resolved)
        return (resolved,)
    raise ConfigError(f"{where}: a bound must be a number or a size-config field, got {value!r}")


def parse_limits(
    entry: dict[str, Any], shape: tuple[int, ...], size_cfg: Any, where: str
) -> ValueLimits | None:
    """The `min`, `below` and `finite` keys of one [[input]] (None when it has none).

    Without a size config (a first pass over the file) bounds that name a field are skipped."""
    if not any(key in entry for key in ("min", "below", "finite")):
        return None
    finite = entry.get("finite", False)
    if not isinstance(finite, bool):
        raise ConfigError(f"{where}: finite must be true or false")
    if size_cfg is None:
        return ValueLimits(finite=finite)
    low = None
    if "min" in entry:
        lows = _resolve(entry["min"], size_cfg, where)
        if len(lows) != 1:
            raise ConfigError(f"{where}: min must be a single number")
        low = lows[0]
    high: tuple[float, ...] = ()
    if "below" in entry:
        high = _resolve(entry["below"], size_cfg, where)
        if len(high) > 1 and (len(shape) < 2 or shape[-1] != len(high)):
            raise ConfigError(
                f"{where}: below has {len(high)} bounds, but the last axis is {list(shape)[-1]} long"
            )
    if low is not None and high and any(h <= low for h in high if not math.isnan(h)):
        raise ConfigError(f"{where}: every bound in below must be greater than min")
    return ValueLimits(low=low, high=high, finite=finite)


def parse_max_dims(
    entry: dict[str, Any], dims: tuple[int, ...], size_cfg: Any, where: str
) -> tuple[int, ...] | None:
    """`max_dims`: the largest size of each axis after the batch (-1: no limit), batch first."""
    if "max_dims" not in entry:
        return None
    raw = entry["max_dims"]
    if not isinstance(raw, list) or len(raw) != len(dims):
        raise ConfigError(f"{where}: max_dims must be a list as long as dims ({len(dims)})")
    if size_cfg is None:
        return None
    limits = []
    for value in raw:
        resolved = _resolve(value, size_cfg, where)
        if len(resolved) != 1:
            raise ConfigError(f"{where}: each entry of max_dims must be a single number")
        limits.append(int(resolved[0]))
    return (-1, *limits)
