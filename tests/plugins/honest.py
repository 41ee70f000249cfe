"""The control: an honest ONNX Runtime runner, the README's example with an evidence marker."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class HonestRunner(OrtRunner):
    name = "honest"
