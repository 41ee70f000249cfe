"""Workloads: seeded, realistic request samples for a model, and their reference outputs.

A `Workload` draws samples with the model's own `sample(rng, cfg)` (models/<name>/model.py),
so the distributions (long-tailed sequence lengths, Zipf ids, log-normal counts with missing
values) live next to the model. Samples are deterministic for (seed, stream): the public seed
from config.toml, combined with a secret seed at grading time. The secret comes from the
environment variable SERVELAB_SECRET_SEED, is read once, removed from the environment and
never printed or stored; `seed_label` says "public+secret" instead.

`reference(samples)` is the ground truth: PyTorch fp32 on the CPU, each sample alone at
batch 1.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lab.batcher import collate
from lab.errors import ConfigError
from lab.repository import ModelHandle, TensorSpec

if TYPE_CHECKING:
    from lab.check import Checker

SECRET_SEED_ENV = "SERVELAB_SECRET_SEED"

_secret_lock = threading.Lock()
_secret_read = False
_secret_seed: int | None = None
_secret_error: str | None = None


def read_secret_seed() -> int | None:
    """The grading-time secret seed, or None. Read once, then removed from os.environ."""
    global _secret_read, _secret_seed, _secret_error
    with _secret_lock:
        if not _secret_read:
            _secret_read = True
            raw = os.environ.pop(SECRET_SEED_ENV, None)
            if raw is not None and raw.strip():
                try:
                    value = int(raw.strip(), 0)
                except ValueError:
                    value = -1
                if value < 0:  # never echo the value: it is a secret
                    _secret_error = f"{SECRET_SEED_ENV} must be a non-negative integer"
                else:
                    _secret_seed = value
        if _secret_error is not None:
            raise ConfigError(_secret_error)
        return _secret_seed


def _stream_word(stream: str) -> int:
    """A stable 32-bit word for a stream name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(stream.encode()).digest()[:4], "little")


def _fingerprint(sample: dict[str, np.ndarray]) -> bytes:
    digest = hashlib.sha256()
    for name in sorted(sample):
        array = np.ascontiguousarray(sample[name])
        digest.update(name.encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.digest()


class Workload:
    """Samples, collation, references and a checker for one model handle."""

    def __init__(self, handle: ModelHandle, seed: int | None = None) -> None:
        self.handle = handle
        public = handle.config.public_seed
        if seed is not None:
            self._seed_words: tuple[int, ...] = (int(seed),)
            self.seed_label: str | int = int(seed)
        else:
            secret = read_secret_seed()
            if secret is None:
                self._seed_words = (public,)
                self.seed_label = public
            else:
                self._seed_words = (public, secret)
                self.seed_label = "public+secret"
        self.seed_source = (
            "given"
            if seed is not None
            else ("public" if self.seed_label == public else "public+secret")
        )
        self._module: Any = None
        self._module_lock = threading.Lock()

    @classmethod
    def for_run(cls, handle: ModelHandle, seed: int | None = None) -> Workload:
        """The workload of one benchmark run. `seed` if given (a rerun with the seed a report
        recorded reproduces its samples); else public+secret when a secret seed is set; else a
        fresh seed from OS randomness, so that nothing outside this process can know the
        samples before they are issued."""
        if seed is None and read_secret_seed() is None:
            workload = cls(handle, secrets.randbits(63))
            workload.seed_source = "fresh"
            return workload
        return cls(handle, seed)

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self.handle.inputs

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self.handle.outputs

    def __repr__(self) -> str:
        return f"Workload({self.handle.name}, {self.handle.size}, seed={self.seed_label})"

    # ----- samples ---------------------------------------------------------------------
    def rng(self, stream: str = "perf") -> np.random.Generator:
        """The generator behind `samples(..., stream)` (a fresh one each call)."""
        sequence = np.random.SeedSequence([*self._seed_words, _stream_word(stream)])
        return np.random.Generator(np.random.PCG64(sequence))

    def samples(self, n: int, stream: str = "perf") -> list[dict[str, np.ndarray]]:
        """n distinct samples, each with batch dimension 1, deterministic for (seed, stream).

        The first k of `samples(n)` are `samples(k)`: one stream, drawn in order.
        """
        if n < 0:
            raise ConfigError(f"number of samples must be >= 0, got {n}")
        rng = self.rng(stream)
        draw = self.handle.module.sample
        cfg = self.handle.size_config
        seen: set[bytes] = set()
        out: list[dict[str, np.ndarray]] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 10 * n + 100:
                raise ConfigError(
                    f"model {self.handle.name}'s sample() keeps repeating itself: "
                    f"only {len(out)} distinct samples out of {attempts} draws"
                )
            sample = draw(rng, cfg)
            key = _fingerprint(sample)
            if key in seen:
                continue
            seen.add(key)
            out.append(sample)
        return out

    def collate(self, samples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """One batch from samples, dynamic axes padded with each input's pad_value."""
        if not samples:
            raise ConfigError("cannot collate an empty list of samples")
        return collate(list(samples), self.input_specs)

    # ----- references ------------------------------------------------------------------
    def torch_module(self) -> Any:
        """The fp32 PyTorch module on the CPU (built once per Workload)."""
        with self._module_lock:
            if self._module is None:
                from lab.weights import load_module

                self._module = load_module(self.handle)
            return self._module

    def reference(
        self, samples: Sequence[dict[str, np.ndarray]], threads: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Ground-truth outputs: PyTorch fp32 on the CPU, each sample alone at batch 1.

        `threads` sets torch's intra-op threads for the duration (a process-wide setting, so
        only for offline use such as export): at batch 1 one thread is fastest, and much
        faster than two when the CPU is shared.
        """
        import torch

        module = self.torch_module()
        previous = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            return [self._reference_one(module, sample) for sample in samples]
        finally:
            if threads is not None:
                torch.set_num_threads(previous)

    def _reference_one(self, module: Any, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(sample[s.name])) for s in self.input_specs]
        with torch.inference_mode():
            values = module(*tensors)
        if isinstance(values, torch.Tensor):
            values = (values,)
        return {
            spec.name: value.detach().to(torch.float32).cpu().numpy().copy()
            for spec, value in zip(self.output_specs, values)
        }

    def checker(self, precision: str | None = None) -> Checker:
        """A checker with this model's tolerances for `precision` (default: the handle's)."""
        from lab.check import Checker

        return Checker.for_model(self.handle, precision or self.handle.precision)
