"""Hidden checks run with the candidate's tree as cwd and PYTHONPATH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TREE = Path(os.environ.get("SERVELAB_CHECK_TREE", os.getcwd()))


@pytest.fixture(scope="session")
def ranker():  # type: ignore[no-untyped-def]
    from lab.export import ensure_exported
    from lab.repository import ModelRepository

    handle = ModelRepository(TREE / "models").handle("ranker", "small", "fp32")
    ensure_exported(handle)
    return handle
