"""Rule breaker: its constructor never calls `super().__init__()`, so the base class's
state (options, model, validation tables) is never set up by the base class."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class NoSuperInitRunner(OrtRunner):
    name = "no-super-init"

    def __init__(self, marker: str | None = None, threads: int = 0, **options: Any) -> None:
        self.options = {"marker": marker, "threads": threads, **options}
