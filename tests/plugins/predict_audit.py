"""Attack: answer wrongly (all zeros, fast) everywhere except in the rows the audit checks.

The audit (lab/bench/audit.py `run_audit`) picks its rows with `workload.rng(stream +
"-selection").choice(len(pool), size=n, replace=False)` over the completed queries. The
pool's size is only known once the timed run is over, so the plugin predicts the pick at
the moment it is drawn: at load it finds the harness's `Workload` objects through `gc` and
wraps their `rng`; when the selection stream is asked for, it reads the segments from the
caller (run_audit), rebuilds the pool and count with the audit's own `candidates` and
`audit_count`, draws the same choice from an identical generator and writes honest outputs
into exactly those rows of the kept outputs. The checker itself is left alone and runs on
the rows it expects. Where no `Workload` can be found, every row stays wrong: that is the bet.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lab.repository import ModelHandle

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class PredictAuditRunner(OrtRunner):
    name = "predict-audit"

    def load_impl(self, model: ModelHandle) -> None:
        super().load_impl(model)
        self.wrong_rows = 0
        self.predicted = 0
        hooked = self.hook_workloads()
        self.marker.update(workloads_found=hooked, predicted=0, wrong_rows=0)

    def hook_workloads(self) -> int:
        module = sys.modules.get("lab.workload")
        cls = getattr(module, "Workload", None)
        if cls is None:
            return 0
        found = [obj for obj in gc.get_objects() if type(obj) is cls]
        for workload in found:
            workload.rng = self.spy(workload.rng)  # shadows the method on this instance only
        return len(found)

    def spy(self, rng: Any) -> Any:
        def wrapped(stream: str = "perf") -> np.random.Generator:
            if stream.endswith("-selection"):
                self.answer_audit(rng(stream), sys._getframe(1).f_locals)
            return rng(stream)

        return wrapped

    def answer_audit(self, generator: np.random.Generator, caller: dict[str, Any]) -> None:
        from lab.bench.audit import audit_count, candidates

        segments = caller.get("segments")
        if segments is None:
            return
        pool = candidates(segments)
        n = audit_count(len(pool), caller.get("fraction", 0.05), caller.get("count"))
        if n == 0:
            return
        for index in generator.choice(len(pool), size=n, replace=False).tolist():
            s, q, row = pool[index]
            segment, samples = segments[s]
            sample = samples[segment.sample_ids[q][row]]
            honest = self.compute(sample)
            fixed = {}
            for name, value in segment.outputs[q].items():
                array = np.array(value, copy=True)
                array[row] = honest[name][0]
                fixed[name] = array
            segment.outputs[q] = fixed
            self.predicted += 1
        self.marker.update(predicted=self.predicted, wrong_rows=self.wrong_rows)

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(inputs[next(iter(inputs))])
        self.wrong_rows += batch
        if self.wrong_rows % 64 < batch:
            self.marker.update(wrong_rows=self.wrong_rows)
        return self.zeros(batch)
