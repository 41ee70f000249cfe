"""The ranker with 8-bit embedding tables: the memory-saving build rolled out last sprint.

Each embedding table is quantised to 8-bit codes with one scale per table (max |w| / 127)
and dequantised back to float32 at load time, so the tables could be stored at a quarter of
their size. The MLPs stay in float32. Served with PyTorch on the CPU.
"""

from __future__ import annotations

from typing import Any

from lab.repository import ModelHandle
from lab.runners.torch import TorchRunner


class QuantisedRankerRunner(TorchRunner):
    name = "ranker-int8"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)

    def load_impl(self, model: ModelHandle) -> None:
        super().load_impl(model)
        torch = self._torch
        with torch.no_grad():
            for table in self._module.tables:
                weight = table.weight
                scale = weight.abs().max() / 127.0
                codes = torch.clamp(torch.round(weight / scale), 0, 255).to(torch.uint8)
                table.weight.copy_(codes.to(weight.dtype) * scale)
