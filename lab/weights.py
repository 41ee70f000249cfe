"""Deterministic weights: numpy PCG64 from a fixed seed, stored as safetensors.

Every machine and PyTorch version produces the same bytes, because the numbers come from
numpy's PCG64 stream (not torch's RNG) in the sorted order of the parameter names.
A model may define `init_weights(cfg, state_dict, rng) -> dict[str, np.ndarray]` in its
`model.py`; otherwise `default_init` is used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from lab.errors import ModelNotFound
from lab.repository import ModelHandle

WEIGHTS_SEED = 20261128


def default_init(state: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Biases 0, norm scales 1, everything else N(0, 0.02) (BERT's initialiser)."""
    weights: dict[str, np.ndarray] = {}
    for name in sorted(state):
        shape = tuple(state[name].shape)
        if name.endswith("bias"):
            weights[name] = np.zeros(shape, np.float32)
        elif "norm" in name.lower() and name.endswith("weight"):
            weights[name] = np.ones(shape, np.float32)
        else:
            weights[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    return weights


def generate(handle: ModelHandle) -> dict[str, np.ndarray]:
    """Build the module for `handle` and draw its weights from PCG64(WEIGHTS_SEED)."""
    module = handle.module.build(handle.size_config)
    state = module.state_dict()
    rng = np.random.Generator(np.random.PCG64(WEIGHTS_SEED))
    init = getattr(handle.module, "init_weights", None)
    if init is not None:
        return dict(init(handle.size_config, state, rng))
    return default_init(state, rng)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_weights(handle: ModelHandle) -> Path:
    """Write the weights file if it is missing; return its path."""
    path = handle.weights_path
    if not path.is_file():
        from safetensors.numpy import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(generate(handle), str(tmp))
        tmp.replace(path)
    return path


def load_module(handle: ModelHandle, generate_missing: bool = True) -> Any:
    """The model's torch.nn.Module in eval mode with its deterministic fp32 weights."""
    from safetensors.torch import load_file

    if generate_missing:
        ensure_weights(handle)
    elif not handle.weights_path.is_file():
        raise ModelNotFound(
            f"weights {handle.weights_path} missing: run `servelab export {handle.name}`"
        )
    module = handle.module.build(handle.size_config)
    module.load_state_dict(load_file(str(handle.weights_path)), strict=True)
    module.eval()
    return module
