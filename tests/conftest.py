"""Shared fixtures: the project root and exported `small` models from the real repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.repository import ModelHandle, ModelRepository

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
