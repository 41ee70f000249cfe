"""The production encoder runner: ONNX Runtime behind the serving-side preprocessing.

Clients send `input_ids` ([CLS] words... [SEP]) and an `attention_mask`. Before the model:

- sequences are cut to `max_len` tokens: attention costs grow with the square of the length
  and p99 matters more than the last words of a long document;
- the attention mask is rebuilt here: some clients sent masks of the wrong length in the
  past, so we no longer trust theirs.

Options: `max_len` (tokens kept, default 128), plus any OnnxRuntimeRunner option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.runners.onnxruntime import OnnxRuntimeRunner


class EncoderRunner(OnnxRuntimeRunner):
    name = "prod-encoder"

    def __init__(self, max_len: int = 128, **options: Any) -> None:
        super().__init__(**options)
        self.options["max_len"] = int(max_len)

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        max_len = int(self.options["max_len"])
        input_ids = np.ascontiguousarray(inputs["input_ids"][:, :max_len])  # (B, T')
        attention_mask = np.ones_like(input_ids)  # every kept token is real
        return super().infer_impl({"input_ids": input_ids, "attention_mask": attention_mask})
