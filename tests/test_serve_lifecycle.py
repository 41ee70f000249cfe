"""`servelab serve` as a process: the banner, the config file, load shedding, timeouts, and a
SIGTERM during load that drains every request in flight."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from lab.protocol import codec
from lab.repository import ModelHandle
from lab.serve.app import BackgroundServer
from lab.serve.config import ServeConfig
from lab.serve.testing import ROOT, ServerProcess
from lab.workload import Workload

ORT = {"intra_op_threads": 1}
FAULTY = "lab.serve.faults:FaultyRunner"


def send(
    port: int, sample: dict[str, np.ndarray], parameters: dict[str, Any] | None = None
) -> tuple[int, Any]:
    body, length = codec.encode_http_request(sample, parameters=parameters)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v2/models/ranker/infer", body, {codec.HEADER_LENGTH: str(length)})
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            return response.status, json.loads(payload)
        return 200, codec.decode_http_response(payload, response.getheader(codec.HEADER_LENGTH))[0]
    finally:
        conn.close()


def get_json(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


# ----- the CLI ----------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", "serve", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--http-port", "70000"], "http-port 70000 is not a port"),
        (["--max-queue-size", "0"], "max-queue-size must be at least 1"),
        (["--model", "nope", "--no-export"], "no model 'nope'"),
        (["--config", "/does/not/exist.toml"], "does not exist"),
    ],
    ids=["bad port", "bad queue", "unknown model", "missing config"],
)
def test_serve_usage_errors_print_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_config_file_with_unknown_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('model = "ranker"\nmax-queue-sizes = 3\n')
    done = run_cli("--config", str(path))
    assert done.returncode == 2 and "unknown key 'max-queue-sizes'" in done.stderr


# ----- config file + SIGTERM drain, on one process -----------------------------------------------
@pytest.fixture(scope="module")
def process(
    tmp_path_factory: pytest.TempPathFactory, ranker_small: ModelHandle
) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("serve") / "serve.toml"
    path.write_text(
        "\n".join(
            [
                'model = ["ranker"]',
                f'runner = "{FAULTY}"',
                "max-batch-size = 4",
                "max-queue-delay-us = 0",
                "max-queue-size = 64",
                "grace-s = 20",
                "export = false",
                "[runner-options]",
                "intra_op_threads = 1",
                "delay_s = 0.25",  # a slow primary, so requests are in flight when SIGTERM comes
                "[fallback-options]",
                "intra_op_threads = 1",
            ]
        )
    )
    with ServerProcess(["--config", str(path), "--max-batch-size", "2"]) as server:
        yield server


def test_serve_prints_its_ports_and_flags_override_the_config_file(process: ServerProcess) -> None:
    assert process.stdout_lines[-1].startswith("serving ranker on http=127.0.0.1:")
    assert all(port > 0 for port in process.ports.values())
    status, config = get_json(process.ports["http"], "/v2/models/ranker/config")
    assert status == 200
    assert config["max_batch_size"] == 2  # the flag, not the file's 4
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 64  # the file
    assert config["backend"] == "faulty"
    assert get_json(process.ports["http"], "/v2/health/ready") == (200, {"ready": True})


def test_sigterm_during_load_drains_in_flight_requests_and_exits_0(
    process: ServerProcess, ranker_small: ModelHandle
) -> None:
    workload = Workload(ranker_small)
    samples = workload.samples(8, stream="serve-drain")
    reference = workload.reference(samples)
    checker = workload.checker()
    port = process.ports["http"]
    outcomes: list[tuple[int, int, str, Any]] = []  # (start_ns, end_ns, outcome, detail)
    lock = threading.Lock()
    stop = threading.Event()

    def client(i: int) -> None:
        while not stop.is_set():
            start = time.perf_counter_ns()
            try:
                status, answer = send(port, samples[i])
            except ConnectionRefusedError:
                outcome, detail = "refused", None
            except (OSError, http.client.HTTPException) as exc:
                outcome, detail = "lost", repr(exc)
            else:
                outcome, detail = str(status), answer
            with lock:
                outcomes.append((start, time.perf_counter_ns(), outcome, (i, detail)))
            if outcome != "200":
                return  # the server said no (or is gone): this client is done

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while sum(o[2] == "200" for o in outcomes) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until the load is flowing
    killed_ns = time.perf_counter_ns()
    code = process.terminate(timeout_s=40)
    stop.set()
    for t in threads:
        t.join(30)

    assert code == 0, process.stderr_lines[-5:]
    assert any("draining" in line for line in process.stderr_lines)
    before = [o for o in outcomes if o[0] < killed_ns]
    # Nothing accepted before SIGTERM was lost: each got its answer or an explicit 503.
    assert {o[2] for o in before} <= {"200", "503"}, [
        o for o in before if o[2] not in ("200", "503")
    ]
    for o in before:
        if o[2] == "503":
            assert "shutting down" in o[3][1]["error"]
    drained = [o for o in before if o[2] == "200" and o[1] > killed_ns]
    assert drained, "no request was in flight at SIGTERM; the drain was not exercised"
    # And the drained answers are right.
    for _, _, _, (i, outputs) in drained:
        result = checker.check([outputs], [reference[i]])
        assert result.passed, result.summary()


# ----- load shedding and timeouts (in-process) ----------------------------------------------------
@pytest.fixture(scope="module")
def slow(ranker_small: ModelHandle) -> Iterator[BackgroundServer]:
    config = ServeConfig(
        model=("ranker",),
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        runner=FAULTY,
        runner_options={**ORT, "delay_s": 0.3},
        fallback_options=ORT,
        max_batch_size=1,
        max_queue_delay_us=0,
        max_queue_size=2,
        export=False,
    )
    with BackgroundServer(config) as srv:
        yield srv


def test_a_full_queue_sheds_load_with_503_and_every_accepted_request_is_answered(
    slow: BackgroundServer, ranker_small: ModelHandle
) -> None:
    samples = Workload(ranker_small).samples(10, stream="serve-shed")
    barrier = threading.Barrier(10)

    def one(sample: dict[str, np.ndarray]) -> tuple[int, Any]:
        barrier.wait(10)
        return send(slow.ports["http"], sample)

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, samples))
    statuses = [a[0] for a in answers]
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1
    for status, body in answers:
        if status == 503:
            assert "queue is full (2 requests waiting)" in body["error"]
    stats = slow.core.models["ranker"].stats.to_dict()["inference_stats"]
    assert stats["fail"]["count"] >= statuses.count(503)


def test_a_full_queue_is_unavailable_over_grpc(
    slow: BackgroundServer, ranker_small: ModelHandle
) -> None:
    samples = Workload(ranker_small).samples(10, stream="serve-shed-grpc")
    client = grpcclient.InferenceServerClient(slow.grpc_url.removeprefix("grpc://"))
    barrier = threading.Barrier(10)

    def one(sample: dict[str, np.ndarray]) -> str:
        inputs = []
        for spec in ranker_small.inputs:
            tensor = grpcclient.InferInput(spec.name, list(sample[spec.name].shape), spec.datatype)
            tensor.set_data_from_numpy(sample[spec.name])
            inputs.append(tensor)
        barrier.wait(10)
        try:
            client.infer("ranker", inputs)
        except InferenceServerException as exc:
            assert "queue is full" in exc.message()
            return str(exc.status())
        return "OK"

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(one, samples))
    assert "StatusCode.UNAVAILABLE" in codes and "OK" in codes
    assert set(codes) <= {"OK", "StatusCode.UNAVAILABLE"}


def test_a_request_timeout_in_the_queue_is_504(
    slow: BackgroundServer, ranker_small: ModelHandle
) -> None:
    first, second = Workload(ranker_small).samples(2, stream="serve-timeout")
    batcher = slow.core.models["ranker"].batcher
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(send, slow.ports["http"], first)  # holds the runner for 0.3 s
        deadline = time.monotonic() + 10
        while batcher.pending == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        status, body = send(slow.ports["http"], second, parameters={"timeout": 1000})  # 1 ms
        assert blocker.result()[0] == 200
    assert status == 504 and "timed out after" in body["error"]
