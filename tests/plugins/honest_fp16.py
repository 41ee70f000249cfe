"""The fp16 control: an honest runner on the fp16 export, which the harness hands over as
`model.onnx_path` when run with `--precision fp16`. Its outputs are cast to float32 (the
contract); they differ from fp32 by fp16 rounding, which the fp16 tolerances allow."""

from __future__ import annotations

import sys
from pathlib import Path

from lab.errors import ConfigError
from lab.repository import ModelHandle

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class HonestFp16Runner(OrtRunner):
    name = "honest-fp16"

    def load_impl(self, model: ModelHandle) -> None:
        if model.precision != "fp16":
            raise ConfigError(f"{self.name} runs the fp16 export: use --precision fp16")
        super().load_impl(model)
        self.marker.update(precision=model.precision, onnx_path=str(model.onnx_path))
