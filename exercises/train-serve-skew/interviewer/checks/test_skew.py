"""Serving must give the reference's answers: long inputs, padded batches, merged batches."""

from __future__ import annotations

import concurrent.futures
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from lab.protocol import codec
from lab.serve.app import BackgroundServer
from lab.serve.config import ServeConfig, build_config, load_file
from lab.workload import Workload


@pytest.fixture(scope="module")
def server(encoder: Any) -> Iterator[BackgroundServer]:
    values = load_file("serving/serve.toml")  # the candidate's production settings
    values.update(
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        export=False,
        drift=False,
        fallback_runner="none",  # a wrong answer must come from the production runner
        batch_policy="fixed_delay",
        max_queue_delay_us=300_000,  # concurrent requests wait to be merged
        preferred_batch_sizes=(8,),
    )
    config: ServeConfig = build_config(values, {})
    with BackgroundServer(config) as srv:
        yield srv


def post(server: BackgroundServer, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    body, length = codec.encode_http_request(inputs)
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/encoder/infer",
        data=body,
        headers={codec.HEADER_LENGTH: str(length)},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        outputs, params = codec.decode_http_response(
            response.read(), response.headers.get(codec.HEADER_LENGTH)
        )
    assert params["servelab_runner"] == "primary"  # the production runner answered
    return outputs


def rows(outputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(outputs["logits"])
    return [{k: v[i : i + 1] for k, v in outputs.items()} for i in range(n)]


def check(workload: Workload, samples: list[dict[str, np.ndarray]], got: list[Any]) -> None:
    result = workload.checker().check(got, workload.reference(samples))
    assert result.passed, result.summary()


def pick(encoder: Any, stream: str, n: int, low: int, high: int) -> list[dict[str, np.ndarray]]:
    samples = Workload(encoder, seed=5).samples(600, stream=stream)
    chosen = [s for s in samples if low <= s["input_ids"].shape[1] <= high][:n]
    assert len(chosen) == n
    return chosen


def test_long_requests_alone_match_the_reference(server: BackgroundServer, encoder: Any) -> None:
    samples = pick(encoder, "skew-long", 4, 140, 256)
    check(Workload(encoder), samples, [post(server, s) for s in samples])


def test_short_requests_alone_still_match(server: BackgroundServer, encoder: Any) -> None:
    samples = pick(encoder, "skew-short", 4, 4, 60)
    check(Workload(encoder), samples, [post(server, s) for s in samples])


def test_a_padded_batch_matches_the_reference_row_by_row(
    server: BackgroundServer, encoder: Any
) -> None:
    samples = pick(encoder, "skew-padded", 6, 4, 120)
    workload = Workload(encoder)
    batch = workload.collate(samples)  # padded with PAD_ID, mask 0 on the padding
    check(workload, samples, rows(post(server, batch)))


def test_merged_batches_of_mixed_lengths_match_the_reference(
    server: BackgroundServer, encoder: Any
) -> None:
    samples = pick(encoder, "skew-merged", 8, 4, 200)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda s: post(server, s), samples))
    stats = server.core.models["encoder"].stats.to_dict()
    assert any(b["batch_size"] > 1 for b in stats["batch_stats"]), "nothing was merged"
    check(Workload(encoder), samples, answers)
