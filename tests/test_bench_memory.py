"""Absurd server rates end within a minute with one clear line, and the whole process tree
(harness and runner worker) stays under 1 GB while they do: measured with psutil on the
real CLI and a plugin that does no work (tests/plugins/noop.py), so nothing but the
harness's own handling of the setting is measured."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LIMIT_BYTES = 1_000_000_000
LIMIT_S = 60.0


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of `process` and all its descendants (those still readable)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # ended between listing and reading
            total += p.memory_info().rss
    return total


def bench_with_peak_memory(qps: str, tmp_path: Path) -> tuple[int, str, int, float]:
    """(exit status, stderr, peak tree RSS in bytes, seconds) of a noop server run."""
    args = [
        sys.executable, "-m", "lab", "bench", "--model", "ranker", "--size", "small",
        "--scenario", "server", "--qps", qps, "--runner", "tests/plugins/noop.py:NoopRunner",
        "--no-progress", "--output", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    child = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watched = psutil.Process(child.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):  # sampling period, not a timing assertion
            try:
                peak = max(peak, tree_rss(watched))
            except psutil.Error:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, stderr = child.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail(f"--qps {qps} ran for more than {LIMIT_S:g} s (peak {peak / 1e6:.0f} MB)")
    finally:
        done.set()
        sampler.join()
    return child.returncode, stderr, peak, time.monotonic() - started


def test_a_million_qps_is_refused_at_once_in_bounded_memory(
    ranker_small: object, tmp_path: Path
) -> None:
    code, stderr, peak, seconds = bench_with_peak_memory("1000000", tmp_path)
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and "beyond what the load generator can issue" in stderr
    assert peak < LIMIT_BYTES, f"peak {peak / 1e6:.0f} MB"
    assert not list(tmp_path.glob("*.json")), "a refused run wrote a report"


def test_a_qps_the_target_cannot_serve_is_refused_after_a_probe_in_bounded_memory(
    ranker_small: object, tmp_path: Path
) -> None:
    # Under the load generator's hard bound, far over what a noop target behind the
    # harness's batcher and an isolated worker completes in a burst: before this was
    # checked, this run prepared 900,000 queries (2 GB, 3 minutes) to abort after 9,000.
    code, stderr, peak, seconds = bench_with_peak_memory("90000", tmp_path)
    assert code == 2, stderr
    last = stderr.strip().splitlines()[-1]
    # Either refusal is right: the burst probe's verdict, or (when a burst on a noisy machine
    # happens to complete fast enough) the prepared-query memory budget checked next.
    assert last.startswith(
        (
            "servelab: error: --qps 90000 is beyond what this target can serve",
            "servelab: error: a server run at 90000 qps",
        )
    ), last
    assert "beyond what this target can serve" in last or "the budget is 400 MB" in last
    assert peak < LIMIT_BYTES, f"peak {peak / 1e6:.0f} MB"
    print(f"peak {peak / 1e6:.0f} MB in {seconds:.1f} s")
