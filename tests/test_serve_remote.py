"""Clients of the server: RemoteTarget (the harness), RemoteRunner (verify), `servelab bench
--target`, and locust with its output check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from lab.batcher import QueueTimeout
from lab.bench.remote_target import RemoteTarget
from lab.errors import InputError, LabError, ModelNotFound, Overloaded, ServeError
from lab.protocol.client import error_for_grpc, error_for_http, parse_url
from lab.repository import ModelHandle
from lab.runners.remote import RemoteRunner
from lab.serve.app import BackgroundServer
from lab.serve.config import ServeConfig
from lab.serve.testing import ROOT
from lab.verify import verify
from lab.workload import Workload

ORT = {"intra_op_threads": 1}


@pytest.fixture(scope="module")
def server(
    ranker_small: ModelHandle, ranker_serve_config: Callable[..., ServeConfig]
) -> Iterator[BackgroundServer]:
    with BackgroundServer(ranker_serve_config()) as srv:
        yield srv


def url_of(server: BackgroundServer, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


# ----- RemoteTarget ------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_remote_target_answers_pass_the_checker_with_the_servers_timing(
    server: BackgroundServer, ranker_small: ModelHandle, protocol: str
) -> None:
    workload = Workload(ranker_small)
    samples = workload.samples(24, stream="serve-remote")
    with RemoteTarget(url_of(server, protocol), ranker_small, concurrency=8) as target:
        futures = [target.submit(s, time.perf_counter_ns()) for s in samples]
        completions = [f.result(60) for f in futures]
        info = target.describe()
    result = workload.checker().check([c.outputs for c in completions], workload.reference(samples))
    assert result.passed, result.summary()
    assert all(c.compute_ns > 0 and c.queue_ns >= 0 for c in completions)
    assert all(c.end_ns <= time.perf_counter_ns() for c in completions)
    assert max(c.batch_size for c in completions) >= 1
    assert info["protocol"] == protocol and info["server"]["name"] == "servelab"
    assert info["model"]["parameters"]["runner"] == "onnxruntime"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_remote_target_fails_a_bad_request_with_the_servers_message(
    server: BackgroundServer, ranker_small: ModelHandle, protocol: str
) -> None:
    sample = Workload(ranker_small).samples(1, stream="serve-remote-bad")[0]
    bad = {"dense": sample["dense"][:, :12].copy(), "sparse": sample["sparse"]}
    with RemoteTarget(url_of(server, protocol), ranker_small) as target:
        future = target.submit(bad, time.perf_counter_ns())
        with pytest.raises(InputError, match=r"input 'dense' has shape \[1, 12\]"):
            future.result(30)
        assert target.submit(sample, time.perf_counter_ns()).result(30).outputs  # still fine


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_remote_target_refuses_a_server_without_the_model(
    server: BackgroundServer, encoder_small: ModelHandle, protocol: str
) -> None:
    target = RemoteTarget(url_of(server, protocol), encoder_small)
    with pytest.raises(ModelNotFound, match="unknown model 'encoder'"):
        target.start()


def test_remote_target_says_when_nothing_listens(ranker_small: ModelHandle) -> None:
    target = RemoteTarget("http://127.0.0.1:9", ranker_small, timeout_s=5)
    with pytest.raises(ServeError, match="cannot reach http://127.0.0.1:9"):
        target.start()


def test_bad_urls_are_config_errors() -> None:
    for url in ("ftp://x:1", "http://", "http://h:1/v2", "127.0.0.1:8000"):
        with pytest.raises(LabError, match="must"):
            parse_url(url)
    assert parse_url("grpc://localhost").port == 8001


def test_server_answers_map_to_the_errors_they_stand_for() -> None:
    assert isinstance(error_for_http(400, "x", "u"), InputError)
    assert isinstance(error_for_http(404, "x", "u"), ModelNotFound)
    assert isinstance(error_for_http(503, "queue is full (4 requests waiting)", "u"), Overloaded)
    assert not isinstance(error_for_http(503, "server is shutting down", "u"), Overloaded)
    assert isinstance(error_for_http(504, "x", "u"), QueueTimeout)
    assert isinstance(error_for_grpc("INVALID_ARGUMENT", "x", "u"), InputError)
    assert isinstance(error_for_grpc("UNAVAILABLE", "queue is full", "u"), Overloaded)
    assert "HTTP 500" in str(error_for_http(500, "boom", "u"))


# ----- RemoteRunner ------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_remote_runner_passes_verify(
    server: BackgroundServer, ranker_small: ModelHandle, protocol: str
) -> None:
    runner = RemoteRunner(url=url_of(server, protocol)).load(ranker_small)
    try:
        result = verify(ranker_small, runner, batch_size=8)
    finally:
        runner.close()
    assert result.passed, result.summary()


def test_remote_runner_refuses_a_model_with_other_inputs(
    server: BackgroundServer, encoder_small: ModelHandle
) -> None:
    runner = RemoteRunner(url=server.http_url, model="ranker")
    with pytest.raises(LabError, match="serves model encoder with inputs"):
        runner.load(encoder_small)


def test_verify_command_accepts_the_remote_runner_plugin(server: BackgroundServer) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "lab", "verify", "--model", "ranker",
            "--runner", "lab.runners.remote:RemoteRunner",
            "--runner-option", f"url={server.http_url}",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PASS" in done.stdout


# ----- the harness against the server ------------------------------------------------------------
def test_bench_target_produces_a_valid_report_with_the_audit_passed(
    server: BackgroundServer, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "lab", "bench", "--target", server.http_url,
            "--model", "ranker", "--scenario", "single-stream", "--duration-s", "1",
            "--min-queries", "64", "--output", str(tmp_path), "--no-html", "--no-progress",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = [p for p in tmp_path.glob("*.json") if p.name != "latest.json"]
    report = json.loads(path.read_text())
    assert report["verdict"]["valid"] is True, report["verdict"]
    assert report["verdict"]["audit_passed"] is True
    (scenario,) = report["scenarios"]
    assert scenario["failed"] == 0 and scenario["audit"]["passed"] is True


# ----- locust --------------------------------------------------------------------------------------
def run_locust(url: str, json_path: Path) -> tuple[int, int, int]:
    """Exit code, requests and failures of a short headless run."""
    done = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"),
            "--headless", "-u", "4", "-r", "4", "-t", "4s", "--host", url,
            "--only-summary", "--json-file", str(json_path), "--exit-code-on-error", "1",
            "--stop-timeout", "60",  # requests in flight at the time limit finish and count
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**os.environ, "SERVELAB_MODEL": "ranker", "SERVELAB_SAMPLES": "16"},
    )  # fmt: skip
    path = json_path if json_path.exists() else json_path.with_suffix(".json")
    stats = json.loads(path.read_text())
    requests = sum(int(entry["num_requests"]) for entry in stats)
    failures = sum(int(entry["num_failures"]) for entry in stats)
    return done.returncode, requests, failures


def test_locust_headless_run_has_no_failures(server: BackgroundServer, tmp_path: Path) -> None:
    code, requests, failures = run_locust(server.http_url, tmp_path / "good")
    assert code == 0
    assert requests > 0 and failures == 0


def test_locust_counts_wrong_outputs_as_failures(
    ranker_small: ModelHandle, tmp_path: Path, ranker_serve_config: Callable[..., ServeConfig]
) -> None:
    corrupt = ranker_serve_config(
        runner="lab.serve.faults:FaultyRunner", runner_options={**ORT, "corrupt": True}
    )
    with BackgroundServer(corrupt) as srv:
        code, requests, failures = run_locust(srv.http_url, tmp_path / "bad")
    assert code == 1
    assert failures == requests > 0


def test_corrupting_runner_really_changes_outputs(ranker_small: ModelHandle) -> None:
    """The locust failure test above relies on this fault actually corrupting answers."""
    from lab.serve.faults import FaultyRunner

    sample = Workload(ranker_small).samples(1, stream="serve-corrupt")[0]
    runner = FaultyRunner(corrupt=True, intra_op_threads=1).load(ranker_small)
    honest = FaultyRunner(intra_op_threads=1).load(ranker_small)
    try:
        assert not np.allclose(
            runner.infer(sample)["probability"], honest.infer(sample)["probability"]
        )
    finally:
        runner.close()
        honest.close()
