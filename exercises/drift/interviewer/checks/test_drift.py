"""A real server: a reference-like stream keeps PSI low; a shifted one crosses the alert
threshold and the fallback policy takes over, still answering correctly."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from lab.protocol import codec
from lab.serve.app import BackgroundServer
from lab.serve.config import ServeConfig
from lab.workload import Workload

DEADLINE_S = 15.0  # the lab's monitor needs well under a second; a loaded CI machine more


def test_psi_matches_a_hand_computed_value() -> None:
    from lab.serve.drift import psi

    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5)
    assert psi([50, 50], [90, 10]) == pytest.approx(0.8788898, abs=1e-5)
    assert psi([1, 1, 2], [2, 2, 4]) == pytest.approx(0.0, abs=1e-12)


@pytest.fixture(scope="module")
def server(ranker: Any) -> Iterator[BackgroundServer]:
    config = ServeConfig(
        model=("ranker",),
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        export=False,
        runner_options={"intra_op_threads": 1},
        fallback_options={"intra_op_threads": 1},
        drift=True,
        drift_action="fallback",
        drift_window_rows=400,
        drift_min_rows=200,
    )
    with BackgroundServer(config) as srv:
        yield srv


def post(server: BackgroundServer, batch: dict[str, np.ndarray]) -> tuple[dict[str, Any], str]:
    body, length = codec.encode_http_request(batch)
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/ranker/infer",
        data=body,
        headers={codec.HEADER_LENGTH: str(length)},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        outputs, params = codec.decode_http_response(
            response.read(), response.headers.get(codec.HEADER_LENGTH)
        )
    return outputs, str(params["servelab_runner"])


def gauge(server: BackgroundServer, name: str) -> dict[str, float]:
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        text = response.read().decode()
    return {
        labels: float(value)
        for labels, value in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M)
    }


def wait_for(server: BackgroundServer, what: str, ok: Any) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # a scrape interval, as Prometheus would


def batches(ranker: Any, stream: str, n: int, scale: float) -> list[dict[str, np.ndarray]]:
    workload = Workload(ranker, seed=99)
    samples = workload.samples(n * 8, stream=stream)
    out = [workload.collate(samples[i * 8 : (i + 1) * 8]) for i in range(n)]
    for b in out:
        b["dense"] = np.floor(b["dense"] * np.float32(scale))
    return out


def window_rows(server: BackgroundServer) -> float:
    return max(gauge(server, "servelab_drift_window_rows").values(), default=0.0)


def test_reference_like_traffic_keeps_every_psi_low(server: BackgroundServer, ranker: Any) -> None:
    wait_for(
        server,
        "the output PSI gauge (reference outputs ready)",
        lambda: bool(gauge(server, "servelab_output_psi")),
    )
    routes = {post(server, b)[1] for b in batches(ranker, "check-same", 50, 1.0)}
    wait_for(server, "the monitor to see 400 rows", lambda: window_rows(server) >= 400)
    psi = gauge(server, "servelab_input_psi")
    assert len(psi) == 13, f"expected one PSI per dense feature, got {sorted(psi)}"
    assert max(psi.values()) < 0.1, psi
    assert max(gauge(server, "servelab_drift_status").values()) == 0
    assert routes == {"primary"}


def test_shifted_traffic_alerts_and_the_fallback_takes_over(
    server: BackgroundServer, ranker: Any
) -> None:
    shifted = batches(ranker, "check-shift", 60, 10.0)  # counts ten times larger upstream
    for b in shifted[:50]:
        post(server, b)

    def alerted() -> bool:
        return max(gauge(server, "servelab_drift_status").values(), default=0) == 2

    wait_for(server, "servelab_drift_status to reach 2 (alert)", alerted)
    assert max(gauge(server, "servelab_input_psi").values()) >= 0.25
    wait_for(
        server,
        "servelab_drift_fallback_active to be 1",
        lambda: max(gauge(server, "servelab_drift_fallback_active").values(), default=0) == 1,
    )
    answers = [post(server, b) for b in shifted[50:]]
    assert {route for _, route in answers} == {"fallback"}
    workload = Workload(ranker)
    samples = [{k: v[i : i + 1] for k, v in b.items()} for b in shifted[50:] for i in range(8)]
    got = [{"probability": o["probability"][i : i + 1]} for o, _ in answers for i in range(8)]
    result = workload.checker().check(got, workload.reference(samples))
    assert result.passed, result.summary()
