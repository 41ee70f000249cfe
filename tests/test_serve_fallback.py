"""A failing or stalled primary runner: the circuit breaker routes to the fallback, every
request is still answered correctly, the degraded state shows, and the primary recovers."""

from __future__ import annotations

import concurrent.futures
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from lab.repository import ModelHandle
from lab.serve.app import BackgroundServer
from lab.serve.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from lab.serve.config import ServeConfig
from lab.workload import Workload

ORT = {"intra_op_threads": 1}
FAULTY = "lab.serve.faults:FaultyRunner"


# ----- the breaker on its own -----------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failures=3, probe_interval_s=5, clock=FakeClock())
    breaker.record_failure("a")
    breaker.record_failure("b")
    breaker.record_success()  # a success in between resets the count
    breaker.record_failure("c")
    breaker.record_failure("d")
    assert breaker.state == CLOSED and not breaker.degraded
    breaker.record_failure("e")
    assert breaker.state == OPEN and breaker.degraded
    assert breaker.snapshot()["last_error"] == "e"
    assert breaker.opened_count == 1


def test_open_breaker_sends_one_probe_per_interval_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, probe_interval_s=5, clock=clock)
    breaker.record_failure("down")
    assert not breaker.allow_primary()
    clock.now += 4.9
    assert not breaker.allow_primary()
    clock.now += 0.2
    assert breaker.allow_primary() and breaker.state == HALF_OPEN
    assert not breaker.allow_primary()  # only one probe in flight
    breaker.record_failure("still down")
    assert breaker.state == OPEN and not breaker.allow_primary()
    clock.now += 5.0
    assert breaker.allow_primary()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow_primary()
    assert breaker.opened_count == 1 and breaker.total_failures == 2


def test_an_inconclusive_probe_rearms_without_counting() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, probe_interval_s=5, clock=clock)
    breaker.record_failure("down")
    clock.now += 5
    assert breaker.allow_primary()
    breaker.record_inconclusive()  # the fallback failed too: the input, not the primary
    assert breaker.state == OPEN and breaker.total_failures == 1
    assert not breaker.allow_primary()


# ----- a server whose primary fails --------------------------------------------------------------
@pytest.fixture(scope="module")
def config(ranker_serve_config: Callable[..., ServeConfig]) -> Callable[..., ServeConfig]:
    """A ranker server whose primary fails on every batch (override to change that)."""

    def make(**overrides: Any) -> ServeConfig:
        base: dict[str, Any] = dict(
            runner=FAULTY,
            runner_options={**ORT, "fail": True},
            max_queue_delay_us=1000,
            breaker_failures=2,
            breaker_probe_s=600.0,
        )
        return ranker_serve_config(**{**base, **overrides})

    return make


def infer_all(
    server: BackgroundServer, handle: ModelHandle, samples: list[dict[str, np.ndarray]]
) -> list[tuple[dict[str, np.ndarray], str]]:
    """Send every sample concurrently; returns (outputs, runner that answered) per sample."""
    import json

    from lab.protocol import codec

    def one(sample: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
        body, length = codec.encode_http_request(sample)
        request = urllib.request.Request(
            f"{server.http_url}/v2/models/{handle.name}/infer",
            data=body,
            headers={codec.HEADER_LENGTH: str(length)},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
            header = response.headers.get(codec.HEADER_LENGTH)
        outputs, params = codec.decode_http_response(payload, header)
        assert json.dumps(params)  # parameters are plain JSON
        return outputs, str(params["servelab_runner"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, samples))


def metric(server: BackgroundServer, name: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        text = response.read().decode()
    match = re.search(rf'^{name}{{model="ranker",version="1"}} (\S+)$', text, re.M)
    assert match, name
    return float(match.group(1))


@pytest.fixture(scope="module")
def failing(
    ranker_small: ModelHandle, config: Callable[..., ServeConfig]
) -> Iterator[BackgroundServer]:
    with BackgroundServer(config()) as srv:
        yield srv


def test_failing_primary_answers_every_request_correctly_through_the_fallback(
    failing: BackgroundServer, ranker_small: ModelHandle
) -> None:
    workload = Workload(ranker_small)
    samples = workload.samples(24, stream="serve-fallback")
    answers = infer_all(failing, ranker_small, samples)
    assert len(answers) == 24
    result = workload.checker().check([a[0] for a in answers], workload.reference(samples))
    assert result.passed, result.summary()
    assert {a[1] for a in answers} == {"fallback"}


def test_degraded_state_shows_in_metadata_statistics_and_metrics(
    failing: BackgroundServer, ranker_small: ModelHandle
) -> None:
    infer_all(failing, ranker_small, Workload(ranker_small).samples(4, stream="serve-degraded"))
    client = httpclient.InferenceServerClient(failing.http_url.removeprefix("http://"))
    assert client.get_model_metadata("ranker")["parameters"]["degraded"] is True
    assert client.is_model_ready("ranker")  # degraded still serves
    stats = client.get_inference_statistics("ranker")["model_stats"][0]
    assert stats["degraded"] is True
    assert stats["breaker"]["state"] == "open"
    assert "injected failure" in stats["breaker"]["last_error"]
    assert stats["fallback_requests"] == stats["inference_stats"]["success"]["count"]
    assert stats["inference_stats"]["fail"]["count"] == 0
    assert metric(failing, "servelab_model_degraded") == 1
    # Two batches failed on the primary and opened the breaker; after that the primary
    # was left alone (no probe is due for ten minutes).
    assert metric(failing, "servelab_primary_failure_count") == 2
    assert client.get_model_config("ranker")["parameters"]["degraded"]["string_value"] == "True"


def test_without_a_fallback_a_failing_primary_answers_500_naming_the_failure(
    ranker_small: ModelHandle, config: Callable[..., ServeConfig]
) -> None:
    sample = Workload(ranker_small).samples(1, stream="serve-nofallback")[0]
    with BackgroundServer(config(fallback_runner="none")) as srv:
        client = httpclient.InferenceServerClient(srv.http_url.removeprefix("http://"))
        inputs = []
        for spec in ranker_small.inputs:
            tensor = httpclient.InferInput(spec.name, list(sample[spec.name].shape), spec.datatype)
            tensor.set_data_from_numpy(sample[spec.name])
            inputs.append(tensor)
        with pytest.raises(Exception) as info:
            client.infer("ranker", inputs)
        assert info.value.status() == "500"  # type: ignore[attr-defined]
        assert "injected failure" in str(info.value)
        assert client.is_server_ready()
        with urllib.request.urlopen(srv.metrics_url, timeout=30) as response:
            text = response.read().decode()
        labels = 'model="ranker",reason="BACKEND",version="1"'
        assert re.search(rf"^nv_inference_request_failure{{{labels}}} 1$", text, re.M)


def test_primary_recovers_after_a_probe_succeeds(
    tmp_path: Path, ranker_small: ModelHandle, config: Callable[..., ServeConfig]
) -> None:
    down = tmp_path / "primary-down"
    down.touch()
    options = {**ORT, "fail_while": str(down)}
    workload = Workload(ranker_small)
    samples = workload.samples(4, stream="serve-recover")
    with BackgroundServer(
        config(runner_options=options, breaker_failures=1, breaker_probe_s=0.05)
    ) as srv:
        state = srv.core.models["ranker"]
        answers = infer_all(srv, ranker_small, samples[:1])
        assert answers[0][1] == "fallback" and state.degraded
        down.unlink()  # heal the primary
        routes = []
        deadline = time.monotonic() + 30
        while state.degraded and time.monotonic() < deadline:
            routes += [r for _, r in infer_all(srv, ranker_small, samples[:1])]
            time.sleep(0.06)  # let the next probe come due
        assert not state.degraded, "the breaker never closed"
        answers = infer_all(srv, ranker_small, samples)
        assert {r for _, r in answers} == {"primary"}
        assert metric(srv, "servelab_model_degraded") == 0
        result = workload.checker().check([a[0] for a in answers], workload.reference(samples))
        assert result.passed, result.summary()


def test_a_stalled_primary_times_out_to_the_fallback(
    ranker_small: ModelHandle, config: Callable[..., ServeConfig]
) -> None:
    workload = Workload(ranker_small)
    samples = workload.samples(3, stream="serve-stall")
    options = {**ORT, "delay_s": 3.0}
    with BackgroundServer(
        config(runner_options=options, primary_timeout_s=0.1, breaker_failures=1)
    ) as srv:
        answers = infer_all(srv, ranker_small, samples)
        assert {r for _, r in answers} == {"fallback"}
        state = srv.core.models["ranker"]
        assert state.degraded
        assert "took longer than 0.1 s" in state.breaker.last_error
        result = workload.checker().check([a[0] for a in answers], workload.reference(samples))
        assert result.passed, result.summary()
