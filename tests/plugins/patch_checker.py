"""Attack: at load, replace the judge. `lab.check.Checker.check` compares the expected
outputs with themselves (always passes) and the audit's functions, wherever a module holds
them (`lab.bench.audit` and every module that imported them by name, found through
`sys.modules`), report a pass. Then answer all zeros, as fast as can be."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from lab.repository import ModelHandle

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import OrtRunner  # noqa: E402


class PatchCheckerRunner(OrtRunner):
    name = "patch-checker"

    def load_impl(self, model: ModelHandle) -> None:
        super().load_impl(model)
        self.faked = 0
        self.marker.update(patched=False, patched_names=[], faked=0)
        self.patch()

    def patch(self) -> None:
        import lab.bench.audit as audit
        import lab.check as check

        runner = self
        real_check = check.Checker.check
        real_audit = audit.run_audit
        real_replay = audit.replay_check

        def always_pass(checker: Any, actual: Any, expected: Any) -> Any:
            runner.count_fake()
            return real_check(checker, expected, expected)

        def audit_passes(*args: Any, **kwargs: Any) -> dict[str, Any]:
            result = real_audit(*args, **kwargs)
            result.update(passed=True, failures=[], failing=[])
            runner.count_fake()
            return result

        def replay_passes(*args: Any, **kwargs: Any) -> dict[str, Any]:
            result = real_replay(*args, **kwargs)
            result.update(flagged=False, errors=[])
            result.pop("reason", None)
            runner.count_fake()
            return result

        check.Checker.check = always_pass  # type: ignore[method-assign]
        patched = ["lab.check.Checker.check"]
        fakes = [(real_audit, audit_passes), (real_replay, replay_passes)]
        for module_name, module in list(sys.modules.items()):
            for attribute, value in list(getattr(module, "__dict__", {}).items()):
                for real, fake in fakes:
                    if value is real:
                        setattr(module, attribute, fake)
                        patched.append(f"{module_name}.{attribute}")
        self.marker.update(patched=True, patched_names=patched)

    def count_fake(self) -> None:
        self.faked += 1
        self.marker.update(faked=self.faked)

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.zeros(len(inputs[next(iter(inputs))]))
