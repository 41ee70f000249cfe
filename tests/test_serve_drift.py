"""Drift monitoring in `servelab serve`: PSI against hand-computed values, the sliding window
against a brute-force count, and real servers on 127.0.0.1 fed a reference-like stream (PSI
stays low) and a shifted one (PSI crosses the alert threshold; the fallback policy acts)."""

from __future__ import annotations

import concurrent.futures
import math
import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from lab.errors import ConfigError
from lab.protocol import codec
from lab.repository import ModelHandle
from lab.serve.app import BackgroundServer
from lab.serve.config import ServeConfig
from lab.serve.drift import DriftMonitor, DriftSettings, Feature, _Window, psi
from lab.serve.testing import ServerProcess
from lab.workload import Workload

SMALL_WINDOW = {"drift_window_rows": 400, "drift_min_rows": 200}  # for ranker_serve_config


# ----- the arithmetic -----------------------------------------------------------------------
def test_psi_matches_a_hand_computed_value() -> None:
    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5) = 0.235115 + 0.643775
    assert psi([50, 50], [90, 10]) == pytest.approx(0.8788898, abs=1e-6)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(psi([90, 10], [50, 50]))  # symmetric
    assert psi([1, 2, 3], [2, 4, 6]) == 0.0  # same shares, any scale


def test_psi_floors_empty_bins_instead_of_dividing_by_zero() -> None:
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi([10, 0], [5, 5]) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="one shape"):
        psi([1, 2], [1, 2, 3])


def test_sliding_window_counts_only_the_last_rows() -> None:
    reference = np.random.default_rng(1).normal(size=(500, 2))
    feature = Feature("x", "x", {"x": reference})
    other = Feature("y", "x", {"x": reference}, column=1)
    window = _Window([feature, other], rows=100)
    rng = np.random.default_rng(2)
    seen = []
    for size in (7, 50, 93, 1, 120, 30):
        batch = rng.normal(size=(size, 2)) * [1.0, 2.0]
        window.add({"x": batch}, size)
        seen.extend(batch)
        last = np.asarray(seen[-100:])
        for j, f in enumerate((feature, other)):
            brute = np.bincount(f.bin(last[:, j]), minlength=f.bins)
            np.testing.assert_array_equal(window.counts[j], brute)
            assert window.psi()[f.name] == pytest.approx(psi(f.reference_counts, brute))
        assert window.size == len(last)
    assert window.psi()["y"] > window.psi()["x"]  # twice the spread drifts more


def test_monitor_thresholds_and_hysteresis_of_the_fallback_flag() -> None:
    reference = np.random.default_rng(3).normal(size=(2000, 1))
    feature = Feature("x", "x", {"x": reference})
    settings = DriftSettings(window_rows=200, min_rows=100, action="fallback", check_every_rows=1)
    monitor = DriftMonitor([feature], [], settings)
    rng = np.random.default_rng(4)
    monitor.observe({"x": rng.normal(size=(200, 1))}, {})
    assert monitor.input_psi["x"] < 0.1 and not monitor.fallback_active
    monitor.observe({"x": rng.normal(2.0, 1.0, size=(200, 1))}, {})  # a two-sigma shift
    assert monitor.input_psi["x"] > 0.25 and monitor.fallback_active
    assert monitor.snapshot()["status"] == "alert"
    monitor.observe({"x": rng.normal(size=(100, 1))}, {})  # half back: still above warn
    assert monitor.input_psi["x"] >= 0.1 and monitor.fallback_active
    monitor.observe({"x": rng.normal(size=(200, 1))}, {})
    assert monitor.input_psi["x"] < 0.1 and not monitor.fallback_active


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"drift_warn_psi": 0.3}, "0 < drift-warn-psi < drift-alert-psi"),
        ({"drift_min_rows": 5000}, "drift-min-rows must be between"),
        ({"drift_action": "page"}, "drift-action 'page' is not one of alert, fallback"),
        (
            {"drift_action": "fallback", "fallback_runner": "none"},
            "drift-action fallback needs a fallback runner",
        ),
    ],
)
def test_bad_drift_settings_are_one_line_config_errors(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        ServeConfig(**overrides).validate()


# ----- real servers ---------------------------------------------------------------------------
def post(url: str, model: str, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    body, length = codec.encode_http_request(inputs)
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer", data=body, headers={codec.HEADER_LENGTH: str(length)}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        outputs, params = codec.decode_http_response(
            response.read(), response.headers.get(codec.HEADER_LENGTH)
        )
    return outputs, str(params["servelab_runner"])


def send(url: str, model: str, batches: list[dict[str, np.ndarray]]) -> list[str]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return [route for _, route in pool.map(lambda b: post(url, model, b), batches)]


def gauges(metrics_url: str, name: str) -> dict[str, float]:
    """label set (without model/version) -> value, for one metric family."""
    with urllib.request.urlopen(metrics_url, timeout=30) as response:
        text = response.read().decode()
    found = {}
    for labels, value in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M):
        key = ",".join(p for p in labels.split(",") if not p.startswith(("model=", "version=")))
        found[key] = float(value)
    return found


def ranker_batches(
    handle: ModelHandle, stream: str, n: int, rows: int, scale: float = 1.0
) -> list[dict[str, np.ndarray]]:
    workload = Workload(handle, seed=7)
    samples = workload.samples(n * rows, stream=stream)
    batches = [workload.collate(samples[i * rows : (i + 1) * rows]) for i in range(n)]
    for batch in batches:
        batch["dense"] = np.floor(batch["dense"] * np.float32(scale))  # counts stay counts
    return batches


def test_reference_like_stream_keeps_psi_low_and_a_shifted_one_alerts(
    ranker_small: ModelHandle, ranker_serve_config: Callable[..., ServeConfig]
) -> None:
    with BackgroundServer(ranker_serve_config(**SMALL_WINDOW)) as server:
        monitor = server.core.models["ranker"].drift
        assert monitor is not None
        assert monitor.output_ready.wait(120)
        send(server.http_url, "ranker", ranker_batches(ranker_small, "drift-same", 50, 8))
        assert monitor.wait_observed(400, 60)
        inputs = gauges(server.metrics_url, "servelab_input_psi")
        outputs = gauges(server.metrics_url, "servelab_output_psi")
        assert len(inputs) == 13 and set(outputs) == {'output="probability"'}
        assert max(inputs.values()) < 0.1, inputs
        assert max(outputs.values()) < 0.1, outputs
        assert gauges(server.metrics_url, "servelab_drift_status") == {"": 0.0}
        assert gauges(server.metrics_url, "servelab_drift_window_rows") == {"": 400.0}

        # Every count ten times larger (a units change upstream): a new window of shifted rows.
        shifted = ranker_batches(ranker_small, "drift-shift", 50, 8, scale=10.0)
        routes = send(server.http_url, "ranker", shifted)
        assert monitor.wait_observed(800, 60)
        inputs = gauges(server.metrics_url, "servelab_input_psi")
        assert max(inputs.values()) >= 0.25, inputs
        assert gauges(server.metrics_url, "servelab_output_psi")['output="probability"'] >= 0.1
        assert gauges(server.metrics_url, "servelab_drift_status") == {"": 2.0}
        assert set(routes) == {"primary"}  # action "alert": gauges only
        assert gauges(server.metrics_url, "servelab_drift_fallback_active") == {"": 0.0}


def test_fallback_policy_routes_to_the_fallback_while_inputs_drift(
    ranker_small: ModelHandle, ranker_serve_config: Callable[..., ServeConfig]
) -> None:
    workload = Workload(ranker_small)
    with BackgroundServer(ranker_serve_config(**SMALL_WINDOW, drift_action="fallback")) as server:
        monitor = server.core.models["ranker"].drift
        assert monitor is not None
        shifted = ranker_batches(ranker_small, "drift-policy", 60, 8, scale=10.0)
        send(server.http_url, "ranker", shifted[:50])
        assert monitor.wait_observed(400, 60)
        assert gauges(server.metrics_url, "servelab_drift_fallback_active") == {"": 1.0}
        answers = [post(server.http_url, "ranker", b) for b in shifted[50:]]
        assert {route for _, route in answers} == {"fallback"}
        # The fallback's answers are right for the inputs it was given.
        samples = [{k: v[i : i + 1] for k, v in b.items()} for b in shifted[50:] for i in range(8)]
        got = [{"probability": o["probability"][i : i + 1]} for o, _ in answers for i in range(8)]
        result = workload.checker().check(got, workload.reference(samples))
        assert result.passed, result.summary()
        stats = server.core.models["ranker"].statistics()
        assert stats["drift"]["fallback_active"] is True
        assert stats["fallback_requests"] >= 10


def test_encoder_length_drift_through_the_cli_and_no_drift_switch(
    encoder_small: ModelHandle,
) -> None:
    workload = Workload(encoder_small, seed=11)
    long = [s for s in workload.samples(400, stream="drift-long") if s["input_ids"].shape[1] > 120]
    short = [s for s in workload.samples(400, stream="drift-short") if s["input_ids"].shape[1] < 30]
    args = ["--model", "encoder", "--no-export", "--runner-option", "intra_op_threads=1"]
    drift = ["--drift-window-rows", "40", "--drift-min-rows", "40", "--drift-reference-rows", "300"]
    with ServerProcess([*args, *drift]) as server:
        send(server.http_url, "encoder", short[:40])
        deadline = time.monotonic() + 60
        while gauges(server.metrics_url, "servelab_drift_window_rows") != {"": 40.0}:
            assert time.monotonic() < deadline, "the monitor never saw 40 rows"
            time.sleep(0.05)  # poll the scrape, as Prometheus would
        psi_value = gauges(server.metrics_url, "servelab_input_psi")['feature="input_ids_length"']
        assert psi_value >= 0.25
        assert gauges(server.metrics_url, "servelab_drift_status") == {"": 2.0}
    with ServerProcess([*args, "--no-drift"]) as server:
        send(server.http_url, "encoder", long[:2])
        assert gauges(server.metrics_url, "servelab_input_psi") == {}
        assert gauges(server.metrics_url, "servelab_drift_status") == {}
