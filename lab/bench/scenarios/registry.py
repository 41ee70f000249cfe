"""The scenario registry: name -> `Scenario` (how it runs, which metrics it declares).

A scenario module builds its `Scenario` and calls `register` at import; the package
`lab.bench.scenarios` imports every module, in the order names are listed in `--help`.

A scenario's `run(context, earlier)` measures and returns its result dict; `earlier` is a
read-only mapping of the results of the scenarios that ran before it in this run (name ->
result), the only way one scenario learns from another (find-peak starts from the
single-stream p50 and the offline throughput when they ran first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.bench.metrics import Metric
    from lab.bench.scenarios.common import BenchContext

Result = dict[str, Any]
Earlier = Mapping[str, Result]


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[BenchContext, Earlier], Result]
    metrics: Callable[[Result], list[Metric]]  # without the speed-up (added for all)


SCENARIOS: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    if scenario.name in SCENARIOS:
        raise ValueError(f"scenario {scenario.name!r} is registered twice")
    SCENARIOS[scenario.name] = scenario
    return scenario
