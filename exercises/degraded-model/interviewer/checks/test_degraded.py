"""A silently degraded primary must be detected from its outputs and fall back; a healthy one
must not; the answers served after detection must be right."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from lab.protocol import codec
from lab.serve.app import BackgroundServer
from lab.serve.config import build_config, load_file
from lab.workload import Workload

REQUESTS = 24
DETECT_WITHIN = 8


@contextmanager
def serving(inner: str, **inner_options: Any) -> Iterator[BackgroundServer]:
    values = load_file("serving/serve.toml")  # the candidate's production settings
    options = {k: v for k, v in values.get("runner_options", {}).items() if k.startswith("inner_")}
    options = {k: v for k, v in options.items() if k != "inner_threads" or "quantised" in inner}
    options.update({f"inner_{k}": v for k, v in inner_options.items()})
    values["runner_options"] = {
        **{k: v for k, v in values.get("runner_options", {}).items() if not k.startswith("inner")},
        **options,
        "inner": inner,
    }
    values.update(
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        export=False,
        drift=False,
        fallback_runner="onnxruntime",
        fallback_options={"intra_op_threads": 1},
        breaker_failures=3,
        breaker_probe_s=600.0,
    )
    with BackgroundServer(build_config(values, {})) as server:
        yield server


def post(server: BackgroundServer, sample: dict[str, np.ndarray]) -> tuple[dict[str, Any], str]:
    body, length = codec.encode_http_request(sample)
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


def run(server: BackgroundServer, ranker: Any, stream: str) -> tuple[list[Any], list[str], Any]:
    workload = Workload(ranker, seed=3)
    samples = workload.samples(REQUESTS, stream=stream)
    answers = [post(server, s) for s in samples]  # one at a time, as a trickle of traffic
    return samples, [route for _, route in answers], [o for o, _ in answers]


def assert_correct(ranker: Any, samples: list[Any], outputs: list[Any]) -> None:
    workload = Workload(ranker)
    result = workload.checker().check(outputs, workload.reference(samples))
    assert result.passed, result.summary()


def test_the_degraded_int8_build_is_detected_and_the_fallback_serves(ranker: Any) -> None:
    with serving("serving.quantised:QuantisedRankerRunner") as server:
        samples, routes, outputs = run(server, ranker, "degraded-int8")
        state = server.core.models["ranker"]
        assert "fallback" in routes[:DETECT_WITHIN], f"not detected in {DETECT_WITHIN}: {routes}"
        first = routes.index("fallback")
        assert set(routes[first:]) == {"fallback"}, f"the degraded build came back: {routes}"
        assert state.degraded, "the circuit breaker did not open"
        assert_correct(ranker, samples[first:], outputs[first:])


def test_a_different_degradation_is_detected_too(ranker: Any) -> None:
    with serving("lab.serve.faults:FaultyRunner", corrupt=True, intra_op_threads=1) as server:
        samples, routes, outputs = run(server, ranker, "degraded-halved")
        assert "fallback" in routes[:DETECT_WITHIN], f"not detected in {DETECT_WITHIN}: {routes}"
        first = routes.index("fallback")
        assert set(routes[first:]) == {"fallback"}
        assert_correct(ranker, samples[first:], outputs[first:])


def test_a_healthy_build_keeps_serving(ranker: Any) -> None:
    with serving("onnxruntime", intra_op_threads=1) as server:
        samples, routes, outputs = run(server, ranker, "degraded-healthy")
        assert set(routes) == {"primary"}, f"a healthy primary fell back: {routes}"
        assert not server.core.models["ranker"].degraded
        assert_correct(ranker, samples, outputs)
