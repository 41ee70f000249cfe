"""Shape planning for GPU runners: optimisation profiles and CUDA-graph buckets.

One profile derivation serves both the TensorRT runner (`profile.set_shape`) and ONNX
Runtime's TensorRT provider (`trt_profile_min_shapes`/`opt`/`max`), so the two build the same
engine ranges. CUDA graphs fix shapes and addresses; one graph per exact (batch, seq) pair is
unbounded, so shapes are padded up to a small set of buckets and the graphs kept in a capped
LRU (`GraphCache`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lab.errors import ConfigError, InputError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """min/opt/max shapes (batch dimension first) for one input."""

    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= d <= hi for d, lo, hi in zip(shape, self.min, self.max)
        )


def derive_profiles(
    inputs: Iterable[Any], max_batch: int, opt_batch: int, max_seq: int, opt_seq: int = 128
) -> dict[str, Profile]:
    """One optimisation profile per input from its spec (`.name`, `.shape` with -1 dynamic).

    Batch: 1 .. max_batch, tuned for opt_batch. Dynamic non-batch axes: 1 .. max_seq, tuned
    for min(opt_seq, max_seq). Fixed axes are fixed."""
    if max_batch < 1 or max_seq < 1:
        raise ConfigError(f"profile bounds must be >= 1 (max_batch={max_batch}, max_seq={max_seq})")
    opt_batch = max(1, min(opt_batch, max_batch))
    profiles: dict[str, Profile] = {}
    for spec in inputs:
        lo, opt, hi = [1], [opt_batch], [max_batch]
        for dim in tuple(spec.shape)[1:]:
            if dim == -1:
                lo.append(1)
                opt.append(max(1, min(opt_seq, max_seq)))
                hi.append(max_seq)
            else:
                lo.append(int(dim))
                opt.append(int(dim))
                hi.append(int(dim))
        profiles[spec.name] = Profile(tuple(lo), tuple(opt), tuple(hi))
    return profiles


def ort_trt_profile_options(profiles: Mapping[str, Profile]) -> dict[str, str]:
    """ONNX Runtime TensorRT EP options: `name:1x128,name2:1x128` for min, opt and max
    (all three are required when any is given)."""

    def join(pick: Callable[[Profile], Shape]) -> str:
        return ",".join(
            f"{name}:{'x'.join(str(d) for d in pick(p))}" for name, p in profiles.items()
        )

    return {
        "trt_profile_min_shapes": join(lambda p: p.min),
        "trt_profile_opt_shapes": join(lambda p: p.opt),
        "trt_profile_max_shapes": join(lambda p: p.max),
    }


def check_in_profile(name: str, shape: Sequence[int], profile: Profile) -> None:
    """An InputError naming the shape and the profile's range when `shape` is outside it."""
    if not profile.contains(shape):
        raise InputError(
            f"input {name!r} shape {list(shape)} is outside the engine's optimisation profile "
            f"(min {list(profile.min)}, max {list(profile.max)}); rebuild with larger "
            "opt_batch/max_seq options"
        )


def buckets_up_to(limit: int, smallest: int = 1) -> tuple[int, ...]:
    """Powers of two from `smallest` up to and including `limit` (limit itself ends it)."""
    if limit < 1:
        raise ConfigError(f"bucket limit must be >= 1, got {limit}")
    values: list[int] = []
    b = max(1, smallest)
    while b < limit:
        values.append(b)
        b *= 2
    values.append(limit)
    return tuple(values)


def bucket(value: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= value; an InputError when value exceeds the largest."""
    for b in buckets:
        if value <= b:
            return b
    raise InputError(f"size {value} exceeds the largest CUDA-graph bucket {buckets[-1]}")


def bucket_shape(shape: Sequence[int], spec_shape: Sequence[int], batch_buckets: Sequence[int],
                 seq_buckets: Sequence[int]) -> Shape:  # fmt: skip
    """Pad a concrete input shape up to its bucket: the batch dim to `batch_buckets`, each
    dynamic (-1) non-batch dim to `seq_buckets`, fixed dims unchanged."""
    out = [bucket(int(shape[0]), batch_buckets)]
    for d, declared in zip(shape[1:], spec_shape[1:]):
        out.append(bucket(int(d), seq_buckets) if declared == -1 else int(d))
    return tuple(out)


K = TypeVar("K")
V = TypeVar("V")


class GraphCache(Generic[K, V]):
    """A capped LRU of captured graphs keyed by bucketed shapes. Evicting a graph releases
    it (`on_evict`), so the memory that graphs pin stays bounded."""

    def __init__(self, capacity: int, on_evict: Callable[[V], None] | None = None) -> None:
        if capacity < 1:
            raise ConfigError(f"graph cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._on_evict = on_evict
        self.evictions = 0

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            _, old = self._items.popitem(last=False)
            self.evictions += 1
            if self._on_evict is not None:
                self._on_evict(old)

    def keys(self) -> list[K]:
        return list(self._items)

    def clear(self) -> None:
        while self._items:
            _, old = self._items.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(old)

    def __len__(self) -> int:
        return len(self._items)
