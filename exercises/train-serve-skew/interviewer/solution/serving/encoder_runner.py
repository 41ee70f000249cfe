"""The production encoder runner: ONNX Runtime behind the serving-side preprocessing, which
now follows the training pipeline's contract exactly.

- Length: at most `max_len` tokens, by default the model's `max_seq_len` (what training
  used). A longer sequence keeps `[CLS]`, the first words and ends with `[SEP]`, as training
  built it; never a bare cut that drops `[SEP]`.
- Mask: the client's `attention_mask` is kept (the dynamic batcher pads batches and marks the
  padding with 0 there); tokens that are padding ids are masked too.

Options: `max_len` (tokens kept, default: the model's max_seq_len), plus any
OnnxRuntimeRunner option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.repository import ModelHandle
from lab.runners.onnxruntime import OnnxRuntimeRunner

PAD_ID, SEP_ID = 0, 2


class EncoderRunner(OnnxRuntimeRunner):
    name = "prod-encoder"

    def __init__(self, max_len: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.options["max_len"] = None if max_len is None else int(max_len)

    def load_impl(self, model: ModelHandle) -> None:
        super().load_impl(model)
        self.max_len = int(self.options["max_len"] or model.size_config.max_seq_len)

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        input_ids = inputs["input_ids"]  # (B, T)
        attention_mask = inputs["attention_mask"] * (input_ids != PAD_ID)  # (B, T)
        if input_ids.shape[1] > self.max_len:
            lengths = attention_mask.sum(axis=1)  # real tokens per row
            input_ids = input_ids[:, : self.max_len].copy()
            attention_mask = attention_mask[:, : self.max_len].copy()
            cut = lengths > self.max_len
            input_ids[cut, self.max_len - 1] = SEP_ID  # [CLS] first words... [SEP]
        return super().infer_impl(
            {
                "input_ids": np.ascontiguousarray(input_ids),
                "attention_mask": np.ascontiguousarray(attention_mask.astype(np.int64)),
            }
        )
