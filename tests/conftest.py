"""Shared fixtures: the project root, exported `small` models from the real repository, and
the serve config of a ranker server on free ports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.repository import ModelHandle, ModelRepository
from lab.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The project root (the folder holding pyproject.toml and models/)."""
    return ROOT


@pytest.fixture(scope="session")
def model_repository() -> ModelRepository:
    """The real `models/` folder of this checkout."""
    return ModelRepository(ROOT / "models")


def _exported(repository: ModelRepository, name: str) -> ModelHandle:
    from lab.export import ensure_exported

    handle = repository.handle(name, "small", "fp32")
    ensure_exported(handle)
    return handle


@pytest.fixture(scope="session")
def encoder_small(model_repository: ModelRepository) -> ModelHandle:
    """The encoder, size small, fp32, exported (ONNX, weights, manifest, reference)."""
    return _exported(model_repository, "encoder")


@pytest.fixture(scope="session")
def ranker_small(model_repository: ModelRepository) -> ModelHandle:
    """The ranker, size small, fp32, exported (ONNX, weights, manifest, reference)."""
    return _exported(model_repository, "ranker")


@pytest.fixture(scope="session")
def ranker_serve_config() -> Callable[..., ServeConfig]:
    """A factory: ServeConfig(**overrides) of a ranker server on free ports (HTTP, gRPC,
    metrics), one ONNX Runtime thread for the runner and the fallback, no export (ask for
    `ranker_small` to export first)."""

    def make(**overrides: Any) -> ServeConfig:
        one_thread = {"intra_op_threads": 1}
        base: dict[str, Any] = dict(
            model=("ranker",),
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            runner_options=one_thread,
            fallback_options=one_thread,
            export=False,
        )
        base.update(overrides)
        return ServeConfig(**base)

    return make
