"""A request alone in the server runs on the event loop (no batcher hand-offs), with the same
answers, routing and statistics; any sign of company sends requests through the batcher."""

from __future__ import annotations

import http.client
import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lab.protocol import codec
from lab.repository import ModelHandle
from lab.serve.app import BackgroundServer
from lab.serve.config import ServeConfig
from lab.workload import Workload

FAULTY = "lab.serve.faults:FaultyRunner"
POISON = 12345.0  # a valid dense count that the FaultyRunner fails on


def faulty(make: Callable[..., ServeConfig], **overrides: Any) -> ServeConfig:
    """A ranker server whose runners fail on POISON, drift off."""
    poisoned = {"intra_op_threads": 1, "poison": POISON}
    base: dict[str, Any] = dict(
        runner=FAULTY,
        runner_options=poisoned,
        fallback_runner=FAULTY,
        fallback_options=poisoned,
        drift=False,
    )
    return make(**{**base, **overrides})


class Connection:
    """One kept-alive HTTP connection to the server."""

    def __init__(self, server: BackgroundServer) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=60)

    def infer(self, sample: dict[str, np.ndarray]) -> tuple[int, Any]:
        body, length = codec.encode_http_request(sample)
        headers = {codec.HEADER_LENGTH: str(length)}
        self.conn.request("POST", "/v2/models/ranker/infer", body, headers)
        response = self.conn.getresponse()
        payload = response.read()
        if response.status != 200:
            return response.status, json.loads(payload)
        return 200, codec.decode_http_response(payload, response.getheader(codec.HEADER_LENGTH))

    def close(self) -> None:
        self.conn.close()


def inline_count(server: BackgroundServer) -> int:
    return int(server.core.models["ranker"].stats.to_dict()["inline_requests"])


@pytest.fixture(scope="module")
def adaptive(
    ranker_small: ModelHandle, ranker_serve_config: Callable[..., ServeConfig]
) -> Iterator[BackgroundServer]:
    with BackgroundServer(faulty(ranker_serve_config)) as srv:
        yield srv


def test_a_lone_request_runs_inline_with_the_same_answers_and_statistics(
    adaptive: BackgroundServer, ranker_small: ModelHandle
) -> None:
    workload = Workload(ranker_small)
    samples = workload.samples(12, stream="serve-inline")
    before = inline_count(adaptive)
    state = adaptive.core.models["ranker"]
    executions = state.stats.to_dict()["execution_count"]
    client = Connection(adaptive)
    try:
        answers = [client.infer(s) for s in samples]
    finally:
        client.close()
    assert [status for status, _ in answers] == [200] * len(samples)
    outputs = [a[1][0] for a in answers]
    result = workload.checker().check(outputs, workload.reference(samples))
    assert result.passed, result.summary()
    # Once the model's lone compute time is known (after at most one batcher run), every
    # request on the only connection skipped the batcher: no queueing, the primary answered.
    ran_inline = inline_count(adaptive) - before
    assert len(samples) - 1 <= ran_inline <= len(samples)
    params = [a[1][1] for a in answers[-ran_inline:]]
    assert {p["servelab_queue_ns"] for p in params} == {0}
    assert {p["servelab_runner"] for p in params} == {"primary"}
    stats = state.stats.to_dict()
    assert stats["execution_count"] == executions + len(samples)  # charged like any batch
    with urllib.request.urlopen(adaptive.metrics_url, timeout=30) as response:
        text = response.read().decode()
    count = inline_count(adaptive)
    assert f'servelab_inline_request_count{{model="ranker",version="1"}} {count}' in text


def test_with_a_second_connection_open_requests_go_through_the_batcher(
    adaptive: BackgroundServer, ranker_small: ModelHandle
) -> None:
    samples = Workload(ranker_small).samples(6, stream="serve-inline-two")
    first, second = Connection(adaptive), Connection(adaptive)
    try:
        assert first.infer(samples[0])[0] == 200  # both connections open from here on
        assert second.infer(samples[1])[0] == 200
        before = inline_count(adaptive)
        answers = [(first if i % 2 else second).infer(s) for i, s in enumerate(samples)]
    finally:
        first.close()
        second.close()
    assert [status for status, _ in answers] == [200] * len(samples)
    assert inline_count(adaptive) == before


def test_an_inline_request_the_model_rejects_is_a_400_and_the_next_one_is_served(
    adaptive: BackgroundServer, ranker_small: ModelHandle
) -> None:
    workload = Workload(ranker_small)
    good = workload.samples(3, stream="serve-inline-bad")
    bad = {"dense": np.full((1, 13), POISON, np.float32), "sparse": good[0]["sparse"]}
    state = adaptive.core.models["ranker"]
    client = Connection(adaptive)
    try:
        assert client.infer(good[0])[0] == 200  # the lone compute time is known from here
        before = inline_count(adaptive)
        status, error = client.infer(bad)
        answers = [client.infer(s) for s in good[1:]]
    finally:
        client.close()
    # Primary and fallback both fail on it: the input's fault, so 400, nothing counted.
    assert status == 400 and "rejected the input" in error["error"], error
    assert [a[0] for a in answers] == [200, 200]
    assert inline_count(adaptive) == before + 2  # the failed one is not counted as served
    assert state.stats.to_dict()["fallback_requests"] == 0 and not state.degraded
    result = workload.checker().check([a[1][0] for a in answers], workload.reference(good[1:]))
    assert result.passed, result.summary()


@pytest.mark.parametrize(
    "overrides",
    [
        {"batch_policy": "fixed_delay", "max_queue_delay_us": 100},
        {"inline_max_compute_ms": 0.0},
        {"inline_max_compute_ms": 1e-6},  # slower than this: never inline
        {"primary_timeout_s": 30.0},  # the primary runs on a thread of its own anyway
    ],
    ids=["fixed-delay", "turned-off", "model-too-slow", "primary-timeout"],
)
def test_a_lone_request_uses_the_batcher_when_the_fast_path_does_not_apply(
    ranker_small: ModelHandle,
    ranker_serve_config: Callable[..., ServeConfig],
    overrides: dict[str, Any],
) -> None:
    samples = Workload(ranker_small).samples(4, stream="serve-inline-off")
    with BackgroundServer(faulty(ranker_serve_config, **overrides)) as srv:
        client = Connection(srv)
        try:
            answers = [client.infer(s) for s in samples]
        finally:
            client.close()
        assert [a[0] for a in answers] == [200] * len(samples)
        assert inline_count(srv) == 0


def test_while_the_fallback_answers_no_request_runs_inline(
    tmp_path: Path, ranker_small: ModelHandle, ranker_serve_config: Callable[..., ServeConfig]
) -> None:
    down = tmp_path / "primary-down"
    config = faulty(
        ranker_serve_config,
        runner_options={"intra_op_threads": 1, "fail_while": str(down)},
        fallback_runner="onnxruntime",
        fallback_options={"intra_op_threads": 1},
        breaker_failures=1,
        breaker_probe_s=600.0,
    )
    samples = Workload(ranker_small).samples(8, stream="serve-inline-degraded")
    with BackgroundServer(config) as srv:
        state = srv.core.models["ranker"]
        client = Connection(srv)
        try:
            healthy = [client.infer(s) for s in samples[:3]]
            assert inline_count(srv) >= 2 and not state.degraded
            down.touch()  # the primary breaks: one failure opens the breaker
            before = inline_count(srv)
            degraded = [client.infer(s) for s in samples[3:]]
        finally:
            client.close()
    assert [a[0] for a in healthy + degraded] == [200] * len(samples)
    assert {a[1][1]["servelab_runner"] for a in degraded} == {"fallback"}
    assert state.degraded
    # At most the request that found the breaker closed ran here; none since.
    assert inline_count(srv) - before <= 1


def test_a_request_too_large_for_the_inline_bound_goes_through_the_batcher(
    adaptive: BackgroundServer, ranker_small: ModelHandle
) -> None:
    state = adaptive.core.models["ranker"]
    workload = Workload(ranker_small)
    one = workload.samples(1, stream="serve-inline-rows")[0]
    many = workload.collate(workload.samples(64, stream="serve-inline-rows"))
    limit_ms = state.config.inline_max_compute_ms
    client = Connection(adaptive)
    try:
        assert client.infer(one)[0] == 200
        state.alone_ms_per_row = limit_ms / 32  # 1 row fits the bound, 64 rows do not
        before = inline_count(adaptive)
        assert client.infer(one)[0] == 200
        assert inline_count(adaptive) == before + 1
        state.alone_ms_per_row = limit_ms / 32
        status, (outputs, params) = client.infer(many)
    finally:
        client.close()
    assert status == 200 and outputs["probability"].shape == (64, 1)
    assert inline_count(adaptive) == before + 1 and params["servelab_batch_size"] == 64


def test_runners_that_wait_on_another_process_never_run_on_the_event_loop() -> None:
    from lab.dist.runner import DistRunner
    from lab.isolation.runner import IsolatedRunner
    from lab.runners.onnxruntime import OnnxRuntimeRunner
    from lab.runners.remote import RemoteRunner
    from lab.runners.torch import TorchRunner

    assert RemoteRunner.may_stall and IsolatedRunner.may_stall and DistRunner.may_stall
    assert not OnnxRuntimeRunner.may_stall and not TorchRunner.may_stall
