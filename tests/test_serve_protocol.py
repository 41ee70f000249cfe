"""The server speaks KServe v2 / Triton: Triton's own clients, health, metadata, config,
statistics and metrics, against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc.model_config_pb2 import ModelConfig
from tritonclient.grpc.service_pb2 import ModelStatisticsResponse, RepositoryIndexResponse
from tritonclient.utils import InferenceServerException

from lab.repository import ModelHandle
from lab.serve.app import BackgroundServer
from lab.serve.config import ServeConfig
from lab.workload import Workload

ORT = {"intra_op_threads": 1}


def serve_config(**overrides: Any) -> ServeConfig:
    base: dict[str, Any] = dict(
        model=("encoder", "ranker"),
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        runner_options=ORT,
        fallback_options=ORT,
        max_queue_delay_us=500,
        export=False,
    )
    base.update(overrides)
    return ServeConfig(**base)


@pytest.fixture(scope="module")
def server(encoder_small: ModelHandle, ranker_small: ModelHandle) -> Iterator[BackgroundServer]:
    with BackgroundServer(serve_config()) as srv:
        yield srv


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    text = body.decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def http_infer(
    client: httpclient.InferenceServerClient,
    handle: ModelHandle,
    sample: dict[str, np.ndarray],
    binary: bool,
) -> dict[str, np.ndarray]:
    inputs = []
    for spec in handle.inputs:
        tensor = httpclient.InferInput(spec.name, list(sample[spec.name].shape), spec.datatype)
        tensor.set_data_from_numpy(sample[spec.name], binary_data=binary)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(s.name, binary_data=binary) for s in handle.outputs]
    result = client.infer(handle.name, inputs, outputs=outputs)
    return {s.name: result.as_numpy(s.name) for s in handle.outputs}


def grpc_infer(
    client: grpcclient.InferenceServerClient,
    handle: ModelHandle,
    sample: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    inputs = []
    for spec in handle.inputs:
        tensor = grpcclient.InferInput(spec.name, list(sample[spec.name].shape), spec.datatype)
        tensor.set_data_from_numpy(sample[spec.name])
        inputs.append(tensor)
    result = client.infer(handle.name, inputs)
    return {s.name: result.as_numpy(s.name) for s in handle.outputs}


# ----- inference through Triton's own clients ---------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_outputs_pass_the_checker(
    server: BackgroundServer, encoder_small: ModelHandle, binary: bool
) -> None:
    workload = Workload(encoder_small)
    samples = workload.samples(8, stream="serve-http")
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    actual = [http_infer(client, encoder_small, s, binary) for s in samples]
    result = workload.checker().check(actual, workload.reference(samples))
    assert result.passed, result.summary()


def test_tritonclient_grpc_outputs_pass_the_checker(
    server: BackgroundServer, encoder_small: ModelHandle
) -> None:
    workload = Workload(encoder_small)
    samples = workload.samples(8, stream="serve-grpc")
    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    actual = [grpc_infer(client, encoder_small, s) for s in samples]
    result = workload.checker().check(actual, workload.reference(samples))
    assert result.passed, result.summary()


def test_checker_rejects_outputs_of_the_wrong_sample(
    server: BackgroundServer, encoder_small: ModelHandle
) -> None:
    """The conformance checks above can fail: answers paired with the wrong samples do."""
    workload = Workload(encoder_small)
    samples = workload.samples(4, stream="serve-http")
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    actual = [http_infer(client, encoder_small, s, True) for s in samples]
    assert not workload.checker().check(actual[::-1], workload.reference(samples))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_multi_row_request_is_answered_row_for_row(
    server: BackgroundServer, ranker_small: ModelHandle, protocol: str
) -> None:
    workload = Workload(ranker_small)
    samples = workload.samples(16, stream="serve-rows")
    batch = workload.collate(samples)
    if protocol == "http":
        client: Any = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
        outputs = http_infer(client, ranker_small, batch, binary=True)
    else:
        client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
        outputs = grpc_infer(client, ranker_small, batch)
    actual = [{k: v[i : i + 1] for k, v in outputs.items()} for i in range(16)]
    result = workload.checker().check(actual, workload.reference(samples))
    assert result.passed, result.summary()


def test_http_infer_echoes_the_request_id_and_reports_queue_and_compute(
    server: BackgroundServer, ranker_small: ModelHandle
) -> None:
    sample = Workload(ranker_small).samples(1, stream="serve-id")[0]
    body = {
        "id": "req-42",
        "inputs": [
            {
                "name": s.name,
                "shape": list(sample[s.name].shape),
                "datatype": s.datatype,
                "data": sample[s.name].ravel().tolist(),
            }
            for s in ranker_small.inputs
        ],
    }
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/ranker/infer", data=json.dumps(body).encode()
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert answer["id"] == "req-42"
    assert answer["model_name"] == "ranker" and answer["model_version"] == "1"
    assert answer["outputs"][0]["shape"] == [1, 1]
    assert answer["parameters"]["servelab_compute_ns"] > 0
    assert answer["parameters"]["servelab_runner"] == "primary"


# ----- health, metadata, configuration ------------------------------------------------------
def test_health_endpoints_answer_live_and_ready(server: BackgroundServer) -> None:
    assert get(f"{server.http_url}/v2/health/live") == (200, {"live": True})
    assert get(f"{server.http_url}/v2/health/ready") == (200, {"ready": True})
    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    assert client.is_server_live() and client.is_server_ready()


def test_server_metadata_lists_the_extensions_served(server: BackgroundServer) -> None:
    status, meta = get(f"{server.http_url}/v2")
    assert status == 200
    assert meta["name"] == "servelab"
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(meta["extensions"])
    grpc_meta = grpcclient.InferenceServerClient(
        server.grpc_url.removeprefix("grpc://")
    ).get_server_metadata()
    assert list(grpc_meta.extensions) == meta["extensions"]


@pytest.mark.parametrize("suffix", ["", "/versions/1"])
def test_model_metadata_describes_inputs_and_outputs(
    server: BackgroundServer, encoder_small: ModelHandle, suffix: str
) -> None:
    status, meta = get(f"{server.http_url}/v2/models/encoder{suffix}")
    assert status == 200
    assert meta["name"] == "encoder" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    hidden = encoder_small.size_config.hidden
    assert meta["outputs"][0] == {"name": "embedding", "datatype": "FP32", "shape": [-1, hidden]}
    assert meta["parameters"]["degraded"] is False


def test_grpc_model_metadata_and_readiness(server: BackgroundServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    meta = client.get_model_metadata("ranker")
    assert meta.name == "ranker" and list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("dense", "FP32", [-1, 13]),
        ("sparse", "INT64", [-1, 26]),
    ]
    assert client.is_model_ready("ranker") and client.is_model_ready("ranker", "1")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("suffix", ["", "/versions/1"])
def test_model_readiness_with_and_without_version(server: BackgroundServer, suffix: str) -> None:
    assert get(f"{server.http_url}/v2/models/ranker{suffix}/ready") == (
        200,
        {"name": "ranker", "ready": True},
    )


def test_unknown_model_or_version_is_404_naming_it(server: BackgroundServer) -> None:
    status, body = get(f"{server.http_url}/v2/models/nope")
    assert status == 404 and "unknown model 'nope'" in body["error"]
    status, body = get(f"{server.http_url}/v2/models/ranker/versions/7/ready")
    assert status == 404 and "no version '7'" in body["error"]


def test_model_config_is_triton_json_that_tritonclient_reads(
    server: BackgroundServer, encoder_small: ModelHandle
) -> None:
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    config = client.get_model_config("encoder")
    assert config["name"] == "encoder"
    assert config["max_batch_size"] == encoder_small.config.max_batch_size
    assert config["input"][0] == {"name": "input_ids", "data_type": "TYPE_INT64", "dims": [-1]}
    assert config["output"][1]["dims"] == [encoder_small.size_config.num_classes]
    batching = config["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 500
    assert batching["preferred_batch_size"] == list(encoder_small.config.preferred_batch_sizes)
    assert batching["default_queue_policy"]["max_queue_size"] == 512


def test_grpc_model_config_answers_like_the_rest_config(server: BackgroundServer) -> None:
    http = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    for model in ("encoder", "ranker"):
        # The REST JSON read into Triton's own ModelConfig message is the gRPC answer.
        over_rest = json_format.ParseDict(http.get_model_config(model), ModelConfig())
        assert grpc_client.get_model_config(model).config == over_rest
    message = grpc_client.get_model_config("ranker").config  # Triton's own message class
    assert message.max_batch_size == 2048
    assert [i.name for i in message.input] == ["dense", "sparse"]
    assert message.input[1].data_type == 9 and list(message.input[1].dims) == [26]  # TYPE_INT64
    assert message.dynamic_batching.max_queue_delay_microseconds == 500
    assert message.instance_group[0].kind == 2  # KIND_CPU
    with pytest.raises(InferenceServerException) as info:
        grpc_client.get_model_config("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_grpc_statistics_match_the_rest_statistics(
    server: BackgroundServer, ranker_small: ModelHandle
) -> None:
    http = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    sample = Workload(ranker_small).samples(1, stream="grpc-stats")[0]
    inputs = []
    for name in ("dense", "sparse"):
        datatype = "FP32" if name == "dense" else "INT64"
        tensor = grpcclient.InferInput(name, list(sample[name].shape), datatype)
        tensor.set_data_from_numpy(sample[name])
        inputs.append(tensor)
    grpc_client.infer("ranker", inputs)
    over_grpc = grpc_client.get_inference_statistics("ranker")  # Triton's own message class
    over_rest = json_format.ParseDict(
        http.get_inference_statistics("ranker"),
        ModelStatisticsResponse(),
        ignore_unknown_fields=True,  # ServeLab's own keys (degraded, breaker...) are REST-only
    )
    assert over_grpc == over_rest
    (stats,) = over_grpc.model_stats
    assert stats.inference_count >= 1 and stats.execution_count >= 1
    assert stats.inference_stats.success.count >= 1 and stats.batch_stats
    every = grpc_client.get_inference_statistics(as_json=True)
    assert sorted(m["name"] for m in every["model_stats"]) == ["encoder", "ranker"]


def test_grpc_repository_index_lists_the_models_like_rest(server: BackgroundServer) -> None:
    http = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    over_grpc = grpc_client.get_model_repository_index()  # Triton's own message class
    over_rest = json_format.ParseDict(
        {"models": http.get_model_repository_index()}, RepositoryIndexResponse()
    )
    assert over_grpc == over_rest
    assert {(m.name, m.version, m.state) for m in over_grpc.models} == {
        ("encoder", "1", "READY"),
        ("ranker", "1", "READY"),
    }


# ----- statistics and metrics -----------------------------------------------------------------
def _stats(server: BackgroundServer, model: str) -> dict[str, Any]:
    status, body = get(f"{server.http_url}/v2/models/{model}/stats")
    assert status == 200
    (entry,) = body["model_stats"]
    return entry


def test_statistics_count_requests_and_split_queue_from_compute(
    server: BackgroundServer, ranker_small: ModelHandle
) -> None:
    before = _stats(server, "ranker")
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    samples = Workload(ranker_small).samples(5, stream="serve-stats")
    for s in samples:
        http_infer(client, ranker_small, s, True)
    after = _stats(server, "ranker")
    stats, old = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - old["success"]["count"] == 5
    assert after["inference_count"] - before["inference_count"] == 5
    assert after["execution_count"] > before["execution_count"]
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[key]["count"] - old[key]["count"] == 5
    assert stats["compute_infer"]["ns"] > old["compute_infer"]["ns"]
    assert stats["queue"]["ns"] > old["queue"]["ns"]  # each waited for the batching delay
    # The request time covers its queue and compute time.
    spent = {k: stats[k]["ns"] - old[k]["ns"] for k in ("success", "queue", "compute_infer")}
    assert spent["success"] >= spent["queue"] + spent["compute_infer"]
    assert after["degraded"] is False
    # tritonclient reads the same statistics; the all-models endpoint lists every model.
    triton = client.get_inference_statistics("ranker")["model_stats"][0]
    assert triton["inference_stats"]["success"]["count"] >= 5
    status, everything = get(f"{server.http_url}/v2/models/stats")
    assert {m["name"] for m in everything["model_stats"]} == {"encoder", "ranker"}


def _metric(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.M)
    assert match, f"no {name} for {model} in metrics"
    return float(match.group(1))


def test_metrics_use_triton_names_and_agree_with_statistics(
    server: BackgroundServer, ranker_small: ModelHandle
) -> None:
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    for s in Workload(ranker_small).samples(3, stream="serve-metrics"):
        http_infer(client, ranker_small, s, True)
    status, text = get(server.metrics_url)
    assert status == 200
    stats = _stats(server, "ranker")
    assert (
        _metric(text, "nv_inference_request_success", "ranker")
        == (stats["inference_stats"]["success"]["count"])
    )
    assert _metric(text, "nv_inference_exec_count", "ranker") == stats["execution_count"]
    assert _metric(text, "nv_inference_count", "ranker") == stats["inference_count"]
    queue_us = stats["inference_stats"]["queue"]["ns"] // 1000
    assert _metric(text, "nv_inference_queue_duration_us", "ranker") == queue_us
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):  # Triton's reason label
        labels = f'model="ranker",reason="{reason}",version="1"'
        assert re.search(rf"^nv_inference_request_failure{{{labels}}} \d+$", text, re.M)
    for name in (
        "nv_inference_request_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_pending_request_count",
    ):
        _metric(text, name, "ranker")
    assert _metric(text, "servelab_model_degraded", "ranker") == 0
    assert "# TYPE nv_inference_request_success counter" in text
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    # The batch-size histogram: cumulative buckets, +Inf equals the count of executions.
    inf = re.search(
        r'^servelab_batch_size_bucket{model="ranker",version="1",le="\+Inf"} (\d+)$', text, re.M
    )
    assert inf and int(inf.group(1)) == stats["execution_count"]
    one = re.search(
        r'^servelab_batch_size_bucket{model="ranker",version="1",le="1"} (\d+)$', text, re.M
    )
    assert one and int(one.group(1)) <= int(inf.group(1))


def test_gpu_gauges_appear_only_with_a_gpu(server: BackgroundServer) -> None:
    from lab.serve.metrics import GpuGauges

    _, text = get(server.metrics_url)
    has_gpu_lines = re.search(r"^nv_gpu_utilization\{", text, re.M) is not None
    assert has_gpu_lines == GpuGauges().present


# ----- wire compatibility of the .proto --------------------------------------------------------
def _fields(descriptor: Any) -> dict[str, tuple[int, int, str]]:
    fields = {}
    for f in descriptor.fields:
        kind = f.message_type.full_name if f.message_type is not None else ""
        fields[f.name] = (f.number, f.type, kind)
    return fields


def test_proto_messages_are_wire_compatible_with_tritons() -> None:
    from tritonclient.grpc import model_config_pb2 as triton_config
    from tritonclient.grpc import service_pb2 as triton

    from lab.protocol._proto import inference_pb2 as ours

    names = [
        "ServerLiveRequest", "ServerLiveResponse", "ServerReadyRequest", "ServerReadyResponse",
        "ModelReadyRequest", "ModelReadyResponse", "ServerMetadataRequest",
        "ServerMetadataResponse", "ModelMetadataRequest", "ModelMetadataResponse",
        "InferParameter", "InferTensorContents", "ModelInferRequest", "ModelInferResponse",
        "ModelConfigRequest", "ModelConfigResponse", "ModelStatisticsRequest",
        "ModelStatisticsResponse", "ModelStatistics", "InferStatistics", "StatisticDuration",
        "InferBatchStatistics", "RepositoryIndexRequest", "RepositoryIndexResponse",
        "ModelConfig", "ModelInput", "ModelOutput", "ModelVersionPolicy", "ModelQueuePolicy",
        "ModelDynamicBatching", "ModelInstanceGroup", "ModelParameter",
    ]  # fmt: skip
    checked = 0
    for name in names:
        source = triton if hasattr(triton, name) else triton_config
        mine, theirs = getattr(ours, name).DESCRIPTOR, getattr(source, name).DESCRIPTOR
        stack = [(mine, theirs)]
        while stack:
            a, b = stack.pop()
            fa, fb = _fields(a), _fields(b)
            allowed = {"parameters"} if a.name == "ModelMetadataResponse" else set()
            assert set(fa) - set(fb) <= allowed, a.full_name
            for field in set(fa) & set(fb):
                assert fa[field][:2] == fb[field][:2], f"{a.full_name}.{field}"
                checked += 1
            nested = {n.name: n for n in b.nested_types}
            stack += [(n, nested[n.name]) for n in a.nested_types if n.name in nested]
    assert checked > 100
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    triton_service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        assert triton_service.methods_by_name[method.name].input_type.name == method.input_type.name


def test_generated_code_is_current(tmp_path: Path) -> None:
    """The committed lab/protocol/_proto matches what gen_proto makes from inference.proto."""
    pytest.importorskip("grpc_tools")
    from lab.protocol.gen_proto import OUT, generate

    for path in generate(tmp_path):
        assert path.read_text() == (OUT / path.name).read_text(), f"regenerate {path.name}"


# ----- authentication ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, ranker_small: ModelHandle
) -> Iterator[BackgroundServer]:
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text("s3cret\n")
    config = serve_config(model=("ranker",), auth_token_file=str(token_file))
    with BackgroundServer(config) as srv:
        yield srv


def test_bearer_token_guards_everything_but_health(secured: BackgroundServer) -> None:
    url = secured.http_url
    assert get(f"{url}/v2/health/live")[0] == 200
    assert get(f"{url}/v2/health/ready")[0] == 200
    for path in ("/v2", "/v2/models/ranker", "/v2/models/ranker/config", "/v2/models/stats"):
        status, body = get(url + path)
        assert status == 401 and "bearer token" in body["error"], path
        assert get(url + path, {"Authorization": "Bearer wrong"})[0] == 401
        assert get(url + path, {"Authorization": "Bearer s3cret"})[0] == 200
    assert get(secured.metrics_url)[0] == 401
    assert get(secured.metrics_url, {"Authorization": "Bearer s3cret"})[0] == 200


def test_grpc_needs_the_token_except_for_health(secured: BackgroundServer) -> None:
    address = secured.grpc_url.removeprefix("grpc://")
    client = grpcclient.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready()
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.get_model_metadata("ranker")
    meta = client.get_model_metadata("ranker", headers={"authorization": "Bearer s3cret"})
    assert meta.name == "ranker"


# ----- gRPC typed contents (tritonclient always sends raw contents) ----------------------------
def _typed_request(pb: Any, sample: dict[str, np.ndarray]) -> Any:
    request = pb.ModelInferRequest(model_name="ranker", id="typed-1")
    dense = request.inputs.add(name="dense", datatype="FP32", shape=[1, 13])
    dense.contents.fp32_contents.extend(sample["dense"].ravel().tolist())
    sparse = request.inputs.add(name="sparse", datatype="INT64", shape=[1, 26])
    sparse.contents.int64_contents.extend(sample["sparse"].ravel().tolist())
    return request


def test_grpc_typed_contents_are_decoded_and_answered(
    server: BackgroundServer, ranker_small: ModelHandle
) -> None:
    import grpc

    from lab.protocol._proto import inference_pb2 as pb
    from lab.protocol._proto import inference_pb2_grpc as pb_grpc
    from lab.protocol.client import grpc_outputs

    workload = Workload(ranker_small)
    samples = workload.samples(4, stream="serve-typed")
    with grpc.insecure_channel(server.grpc_url.removeprefix("grpc://")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        responses = [stub.ModelInfer(_typed_request(pb, s), timeout=30) for s in samples]
        assert responses[0].id == "typed-1" and responses[0].model_version == "1"
        actual = [grpc_outputs(r)[0] for r in responses]
        result = workload.checker().check(actual, workload.reference(samples))
        assert result.passed, result.summary()
        wrong_field = _typed_request(pb, samples[0])
        values = list(wrong_field.inputs[1].contents.int64_contents)
        del wrong_field.inputs[1].contents.int64_contents[:]
        wrong_field.inputs[1].contents.fp32_contents.extend(float(v) for v in values)
        mixed = _typed_request(pb, samples[0])
        mixed.raw_input_contents.extend([b"\0" * 52, b"\0" * 208])
        for request, message in (
            (wrong_field, "has 0 values in int64_contents"),
            (mixed, "typed contents but the request uses raw_input_contents"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert message in info.value.details()  # type: ignore[attr-defined]
