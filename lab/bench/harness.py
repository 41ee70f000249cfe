"""Where the bench used to live: `run_bench` and `BenchConfig`, re-exported.

The run is assembled in lab.bench.run, the configuration is lab.bench.config, each
scenario is a module of lab.bench.scenarios (registry `SCENARIOS`), the metrics are
lab.bench.metrics.
"""

from lab.bench.config import MAIN_JOB_SCENARIOS, BenchConfig, parse_concurrency
from lab.bench.run import run_bench
from lab.bench.scenarios import SCENARIOS

__all__ = ["MAIN_JOB_SCENARIOS", "SCENARIOS", "BenchConfig", "parse_concurrency", "run_bench"]
