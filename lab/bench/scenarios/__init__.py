"""The bench scenarios (MLPerf names), one module each, behind the `SCENARIOS` registry.

  single-stream  one query at a time; metric p90 latency
  offline        all samples issued at once, batched at `batch_size`; metric samples/s
  server         Poisson arrivals at `qps`; VALID only when p99 (from the schedule) <= SLO
  find-peak      the highest QPS that stays VALID in server, then a full server run there
  sweep          closed-loop concurrency levels (perf_analyzer's --concurrency-range)

Adding a scenario: a module here that builds a `Scenario` and `register`s it, and its
import line below (the order of these lines is the order `--help` lists them in).
"""

from lab.bench.scenarios import single_stream, offline, server, find_peak, sweep  # noqa: F401, I001
from lab.bench.scenarios.registry import SCENARIOS, Earlier, Result, Scenario, register

__all__ = ["SCENARIOS", "Earlier", "Result", "Scenario", "register"]
