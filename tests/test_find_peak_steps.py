"""find-peak's search steps are long enough for their rate, and a report says why the
bracket and the confirmed peak disagree when they do."""

from __future__ import annotations

import pytest

from lab.bench.scenarios.find_peak import agreement, step_duration


def test_a_step_lasts_long_enough_for_700_queries_and_to_see_an_overload() -> None:
    # 100 qps: 700 queries need 7 s, more than the 3 s asked for
    assert step_duration(3.0, 100.0, 130.0, 0.10, 10.0) == pytest.approx(7.0)
    # 1000 qps: 0.7 s of queries, but a 10% overload needs 2 x 130 ms / 0.1 = 2.6 s to show
    assert step_duration(1.0, 1000.0, 130.0, 0.10, 10.0) == pytest.approx(2.6)
    # never longer than the confirming run, never shorter than asked
    assert step_duration(3.0, 5.0, 130.0, 0.10, 10.0) == pytest.approx(10.0)
    assert step_duration(12.0, 5.0, 130.0, 0.10, 10.0) == pytest.approx(12.0)


def test_agreement_says_why_the_confirmed_peak_is_lower() -> None:
    found = {
        "lower_qps": 104.0,
        "final_attempts": [
            {"qps": 104.0, "valid": False, "reasons": ["p99 latency 2400 ms exceeds the SLO"]},
            {"qps": 52.0, "valid": False, "reasons": ["not stable: throughput windows differ"]},
            {"qps": 46.7, "valid": True, "reasons": []},
        ],
    }
    result = {"peak_qps": 46.7, "telemetry": {"other_processes_cpu_cores_mean": 1.4}}
    verdict = agreement(found, result)
    assert verdict["agrees"] is False
    assert verdict["confirmed_over_bracket"] == pytest.approx(46.7 / 104)
    assert "unstable" in verdict["why"] and "SLO" in verdict["why"]
    assert "other processes used 1.4 CPU cores" in verdict["why"]
    close = agreement({**found, "final_attempts": found["final_attempts"][-1:]},
                      {"peak_qps": 95.0})  # fmt: skip
    assert close["agrees"] is True and close["why"] == ""
