"""Arrival schedules and a precise wait.

`poisson_schedule` precomputes open-loop arrival offsets from a seeded generator (MLPerf's
Server scenario): inter-arrival gaps are exponential with mean 1/rate. `wait_until` sleeps
to about 200 us before the target time and spins the rest, because `time.sleep` overshoots
by tens to hundreds of microseconds.
"""

from __future__ import annotations

import time

import numpy as np

from lab.errors import ConfigError

SPIN_NS = 200_000


def poisson_schedule(rate_qps: float, count: int, seed: int) -> np.ndarray:
    """Arrival offsets in ns from the start (int64, non-decreasing), `count` of them.

    The first query arrives after one exponential gap, like every other one."""
    if rate_qps <= 0:
        raise ConfigError(f"the server scenario needs a positive QPS, got {rate_qps}")
    if count < 1:
        raise ConfigError("a schedule needs at least one query")
    rng = np.random.Generator(np.random.PCG64(seed))
    gaps_s = rng.exponential(1.0 / rate_qps, size=count)
    return np.cumsum(gaps_s * 1e9).astype(np.int64)


def uniform_schedule(rate_qps: float, count: int) -> np.ndarray:
    """Evenly spaced arrivals (a constant request rate)."""
    if rate_qps <= 0:
        raise ConfigError(f"a schedule needs a positive QPS, got {rate_qps}")
    return (np.arange(1, count + 1, dtype=np.float64) * (1e9 / rate_qps)).astype(np.int64)


def wait_until(deadline_ns: int, spin_ns: int = SPIN_NS) -> int:
    """Block until `time.perf_counter_ns()` reaches `deadline_ns`; return the time it did."""
    now = time.perf_counter_ns()
    remaining = deadline_ns - now
    if remaining > spin_ns:
        time.sleep((remaining - spin_ns) / 1e9)
    now = time.perf_counter_ns()
    while now < deadline_ns:
        now = time.perf_counter_ns()
    return now
