"""Attack: exact at batch 1, wrong in padded batches. With more than one sample it drops the
attention mask (all ones), so padding tokens are attended to and pooled: a shorter sample's
embedding and logits change with the longest sample in its batch. A check at batch 1 only
(today's `servelab verify` default) cannot see it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lab.repository import ModelHandle

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class Batch1OnlyRunner(OrtRunner):
    name = "batch1-only"

    def load_impl(self, model: ModelHandle) -> None:
        super().load_impl(model)
        self.padded_batches = 0
        self.marker.update(padded_batches=0)

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(inputs["attention_mask"])
        if batch == 1:
            return self.compute(inputs)
        unmasked = dict(inputs, attention_mask=np.ones_like(inputs["attention_mask"]))
        self.padded_batches += 1
        self.marker.update(padded_batches=self.padded_batches)
        return self.compute(unmasked)
