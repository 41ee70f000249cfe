"""Bad input never takes the server down: each gets a 4xx (gRPC INVALID_ARGUMENT) with
`{"error": ...}` naming the problem, and the server keeps answering good requests."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from lab.errors import InputError
from lab.protocol import codec
from lab.repository import ModelHandle
from lab.serve.app import BackgroundServer
from lab.serve.config import ServeConfig
from lab.workload import Workload

ORT = {"intra_op_threads": 1}
BODY_LIMIT = 64 * 1024
Body = dict[str, Any]


@pytest.fixture(scope="module")
def server(
    ranker_small: ModelHandle, ranker_serve_config: Callable[..., ServeConfig]
) -> Iterator[BackgroundServer]:
    config = ranker_serve_config(max_queue_delay_us=200, max_body_bytes=BODY_LIMIT)
    with BackgroundServer(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def sample(ranker_small: ModelHandle) -> dict[str, np.ndarray]:
    return Workload(ranker_small).samples(1, stream="serve-errors")[0]


def post(
    server: BackgroundServer,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = "/v2/models/ranker/infer",
    method: str = "POST",
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        payload = response.read()
        status = response.status
    finally:
        conn.close()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def json_body(sample: dict[str, np.ndarray]) -> Body:
    return {
        "inputs": [
            {
                "name": "dense",
                "shape": list(sample["dense"].shape),
                "datatype": "FP32",
                "data": sample["dense"].ravel().tolist(),
            },
            {
                "name": "sparse",
                "shape": list(sample["sparse"].shape),
                "datatype": "INT64",
                "data": sample["sparse"].ravel().tolist(),
            },
        ]
    }


def assert_serving(server: BackgroundServer, sample: dict[str, np.ndarray]) -> None:
    status, body = post(server, json.dumps(json_body(sample)).encode())
    assert status == 200, body
    assert post(server, b"", method="GET", path="/v2/health/ready")[0] == 200


def _mutate(edit: Callable[[Body], None]) -> Callable[[Body], Body]:
    def apply(body: Body) -> Body:
        edit(body)
        return body

    return apply


def _set(index: int, key: str, value: Any) -> Callable[[Body], Body]:
    return _mutate(lambda b: b["inputs"][index].__setitem__(key, value))


JSON_CASES: list[tuple[str, Callable[[Body], Body], int, str]] = [
    ("unknown input", _set(0, "name", "bogus"), 400, "unknown input 'bogus'"),
    ("missing input", _mutate(lambda b: b["inputs"].pop()), 400, "missing input 'sparse'"),
    ("duplicate input", _mutate(lambda b: b["inputs"].append(b["inputs"][0])), 400, "more than once"),
    ("wrong rank", _set(0, "shape", [13]), 400, "expected rank 2"),
    ("wrong dim", _set(0, "shape", [1, 12]), 400, "expected [-1, 13]"),
    ("empty dim", _set(0, "shape", [0, 13]), 400, "at least 1"),
    ("shape not ints", _set(0, "shape", [1, "13"]), 400, "list of integers"),
    ("wrong datatype", _set(0, "datatype", "INT64"), 400, "datatype 'INT64', expected FP32"),
    ("unknown datatype", _set(1, "datatype", "INT128"), 400, "expected INT64"),
    ("too few elements", _set(0, "data", [1.0] * 12), 400, "has 12 data elements"),
    ("too many elements", _set(1, "data", [1] * 27), 400, "has 27 data elements"),
    ("floats for INT64", _set(1, "data", [0.5] * 26), 400, "needs integer data"),
    ("strings for FP32", _set(0, "data", ["x"] * 13), 400, "needs numeric data"),
    ("ragged data", _set(0, "data", [[1.0, 2.0], [3.0]]), 400, "evenly nested"),
    ("data not a list", _set(0, "data", 3), 400, "'data' must be a list"),
    ("no data", _mutate(lambda b: b["inputs"][0].pop("data")), 400, "neither 'data'"),
    ("int64 overflow", _set(1, "data", [2**70] * 26), 400, "outside the INT64 range"),
    ("over max batch", _set(0, "shape", [2049, 13]), 400, "max_batch_size 2048"),
    (
        "batch sizes disagree",
        _mutate(lambda b: b["inputs"][1].update(shape=[2, 26], data=b["inputs"][1]["data"] * 2)),
        400,
        "has batch size 2",
    ),
    ("no inputs", _mutate(lambda b: b.update(inputs=[])), 400, "non-empty list"),
    ("inputs not a list", _mutate(lambda b: b.update(inputs={})), 400, "non-empty list"),
    ("unknown output", _mutate(lambda b: b.update(outputs=[{"name": "x"}])), 400, "unknown output 'x'"),
    ("id not a string", _mutate(lambda b: b.update(id=7)), 400, "'id' must be a string"),
    ("bad timeout", _mutate(lambda b: b.update(parameters={"timeout": -1})), 400, "'timeout'"),
    (
        "sequence batching",
        _mutate(lambda b: b.update(parameters={"sequence_id": 3})),
        400,
        "sequence batching is not supported",
    ),
    (
        "shared memory",
        _mutate(lambda b: b["inputs"][0].update(parameters={"shared_memory_region": "r"})),
        400,
        "shared memory is not supported",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    "edit,status,message", [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES]
)
def test_each_bad_json_request_gets_a_4xx_naming_the_problem(
    server: BackgroundServer,
    sample: dict[str, np.ndarray],
    edit: Callable[[Body], Body],
    status: int,
    message: str,
) -> None:
    got, body = post(server, json.dumps(edit(json_body(sample))).encode())
    assert got == status, body
    assert message in body["error"]
    assert_serving(server, sample)


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b"\xff\xfe", "not UTF-8"),
        (b"", "malformed JSON"),
        (b"[" * 50_000, "malformed JSON"),
    ],
    ids=["garbage", "list", "not utf-8", "empty", "deep nesting"],
)
def test_malformed_bodies_get_400(
    server: BackgroundServer, sample: dict[str, np.ndarray], payload: bytes, message: str
) -> None:
    status, body = post(server, payload)
    assert status == 400 and message in body["error"]
    assert_serving(server, sample)


def binary_request(sample: dict[str, np.ndarray]) -> tuple[Body, bytes, bytes]:
    header = json_body(sample)
    for entry, name in zip(header["inputs"], ("dense", "sparse")):
        del entry["data"]
        entry["parameters"] = {"binary_data_size": sample[name].nbytes}
    return header, sample["dense"].tobytes(), sample["sparse"].tobytes()


def _send_binary(
    server: BackgroundServer, header: Body, tail: bytes, header_length: int | None = None
) -> tuple[int, Any]:
    text = json.dumps(header).encode()
    length = len(text) if header_length is None else header_length
    return post(server, text + tail, {codec.HEADER_LENGTH: str(length)})


def test_binary_request_is_accepted_when_sizes_agree(
    server: BackgroundServer, sample: dict[str, np.ndarray]
) -> None:
    header, dense, sparse = binary_request(sample)
    status, body = _send_binary(server, header, dense + sparse)
    assert status == 200, body


def test_binary_size_that_disagrees_with_the_shape_is_400(
    server: BackgroundServer, sample: dict[str, np.ndarray]
) -> None:
    header, dense, sparse = binary_request(sample)
    header["inputs"][0]["parameters"]["binary_data_size"] = 50
    status, body = _send_binary(server, header, dense[:50] + sparse)
    assert status == 400 and "binary_data_size 50" in body["error"]
    assert "needs 52 bytes" in body["error"]


def test_binary_payload_shorter_than_declared_is_400(
    server: BackgroundServer, sample: dict[str, np.ndarray]
) -> None:
    header, dense, sparse = binary_request(sample)
    status, body = _send_binary(server, header, dense + sparse[:-8])
    assert status == 400 and "binary data for input 'sparse' ends at byte 260" in body["error"]


def test_binary_bytes_no_input_claims_are_400(
    server: BackgroundServer, sample: dict[str, np.ndarray]
) -> None:
    header, dense, sparse = binary_request(sample)
    status, body = _send_binary(server, header, dense + sparse + b"\0" * 4)
    assert status == 400 and "4 bytes of binary data that no input claims" in body["error"]


@pytest.mark.parametrize("length,message", [("9999", "but the body has"), ("x", "integer")])
def test_bad_header_length_is_400(
    server: BackgroundServer, sample: dict[str, np.ndarray], length: str, message: str
) -> None:
    header, dense, sparse = binary_request(sample)
    body = json.dumps(header).encode() + dense + sparse
    status, answer = post(server, body, {codec.HEADER_LENGTH: length})
    assert status == 400 and message in answer["error"]


def test_binary_input_without_the_header_is_400(
    server: BackgroundServer, sample: dict[str, np.ndarray]
) -> None:
    header, dense, sparse = binary_request(sample)
    status, body = post(server, json.dumps(header).encode())
    assert status == 400 and codec.HEADER_LENGTH in body["error"]


def test_body_over_the_limit_is_413_and_the_server_keeps_serving(
    server: BackgroundServer, sample: dict[str, np.ndarray]
) -> None:
    status, body = post(server, b" " * (BODY_LIMIT + 1))
    assert status == 413 and f"over the limit of {BODY_LIMIT} bytes" in body["error"]
    assert_serving(server, sample)


def test_unknown_model_route_and_method_get_json_errors(server: BackgroundServer) -> None:
    status, body = post(server, b"{}", path="/v2/models/nope/infer")
    assert status == 404 and "unknown model 'nope'" in body["error"]
    status, body = post(server, b"", path="/v2/nowhere", method="GET")
    assert status == 404 and "no such endpoint" in body["error"]
    status, body = post(server, b"", path="/v2/models/ranker/infer", method="GET")
    assert status == 405 and "not allowed" in body["error"]


def test_ids_beyond_the_tables_get_400_without_opening_the_breaker(
    server: BackgroundServer, sample: dict[str, np.ndarray]
) -> None:
    body = json_body(sample)
    body["inputs"][1]["data"] = [10**9] * 26  # beyond every embedding table
    for _ in range(server.server.config.breaker_failures + 2):
        status, answer = post(server, json.dumps(body).encode())
        assert status == 400, answer
        assert "input 'sparse' at index [0, 0]: value 1000000000 is outside" in answer["error"]
    assert server.core.models["ranker"].degraded is False
    assert_serving(server, sample)


# ----- gRPC -----------------------------------------------------------------------------------
def _grpc_inputs(sample: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name in ("dense", "sparse"):
        datatype = np_to_triton_dtype(sample[name].dtype)
        tensor = grpcclient.InferInput(name, list(sample[name].shape), datatype)
        tensor.set_data_from_numpy(sample[name])
        inputs.append(tensor)
    return inputs


def test_grpc_bad_inputs_are_invalid_argument_and_unknown_model_not_found(
    server: BackgroundServer, sample: dict[str, np.ndarray]
) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    wrong_name = _grpc_inputs(sample)
    wrong_name[0]._input.name = "bogus"
    wrong_dtype = _grpc_inputs(
        {"dense": sample["dense"].astype(np.float64), "sparse": sample["sparse"]}
    )
    short = _grpc_inputs(sample)
    short[1]._raw_content = short[1]._raw_content[:-8]
    over = _grpc_inputs(sample)  # claims 2049 rows; the shape is checked before the data
    for tensor in over:
        dims = list(tensor._input.shape)
        del tensor._input.shape[:]
        tensor._input.shape.extend([2049, dims[1]])
    cases = [
        (wrong_name, "unknown input 'bogus'"),
        (wrong_dtype, "datatype 'FP64', expected FP32"),
        (short, "200 bytes of raw contents"),
        (over, "max_batch_size 2048"),
    ]
    for inputs, message in cases:
        with pytest.raises(InferenceServerException) as info:
            client.infer("ranker", inputs)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
        assert message in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", _grpc_inputs(sample))
    assert info.value.status() == "StatusCode.NOT_FOUND"
    big = _grpc_inputs(
        {"dense": np.zeros((2048, 13), np.float32), "sparse": np.zeros((2048, 26), np.int64)}
    )
    with pytest.raises(InferenceServerException) as info:  # over --max-body-bytes
        client.infer("ranker", big)
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    result = client.infer("ranker", _grpc_inputs(sample))
    assert result.as_numpy("probability").shape == (1, 1)


# ----- one bad request cannot fail the requests it was batched with ----------------------------
POISON = 12345.0  # a valid dense count that the FaultyRunner fails on


@pytest.fixture(scope="module")
def merging(
    ranker_small: ModelHandle, ranker_serve_config: Callable[..., ServeConfig]
) -> Iterator[BackgroundServer]:
    poisoned = {**ORT, "poison": POISON}
    config = ranker_serve_config(
        runner="lab.serve.faults:FaultyRunner",
        runner_options=poisoned,
        fallback_runner="lab.serve.faults:FaultyRunner",
        fallback_options=poisoned,
        # A batch leaves only when it holds 5 rows (no delay can expire first): the five
        # requests below are merged into one batch whatever the timing.
        batch_policy="fixed_delay",
        max_queue_delay_us=600_000_000,
        preferred_batch_sizes=(5,),
    )
    with BackgroundServer(config) as srv:
        yield srv


def test_a_merged_batch_with_one_bad_request_answers_the_good_ones_from_the_primary(
    merging: BackgroundServer, ranker_small: ModelHandle
) -> None:
    workload = Workload(ranker_small)
    good = workload.samples(4, stream="serve-merge")
    bad = {"dense": np.full((1, 13), POISON, np.float32), "sparse": good[0]["sparse"]}
    state = merging.core.models["ranker"]
    primary_calls = state.primary.calls  # type: ignore[attr-defined]

    def send(s: dict[str, np.ndarray]) -> tuple[int, Any]:
        body, length = codec.encode_http_request(s)
        conn = http.client.HTTPConnection("127.0.0.1", merging.ports["http"], timeout=60)
        conn.request("POST", "/v2/models/ranker/infer", body, {codec.HEADER_LENGTH: str(length)})
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            return response.status, json.loads(payload)
        return 200, codec.decode_http_response(payload, response.getheader(codec.HEADER_LENGTH))

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(send, s) for s in [*good, bad]]
        answers = [f.result() for f in futures]
    assert answers[-1][0] == 400 and "rejected the input" in answers[-1][1]["error"]
    assert "poison" in answers[-1][1]["error"]
    assert [a[0] for a in answers[:4]] == [200] * 4
    # The merged batch failed on the primary, was split, and each good request was answered
    # by the primary alone: one merged call plus five single calls.
    assert [a[1][1]["servelab_runner"] for a in answers[:4]] == ["primary"] * 4
    assert state.primary.calls == primary_calls + 6  # type: ignore[attr-defined]
    stats = state.stats.to_dict()
    assert stats["fallback_requests"] == 0
    assert state.breaker.total_failures == 0 and not state.degraded
    result = workload.checker().check([a[1][0] for a in answers[:4]], workload.reference(good))
    assert result.passed, result.summary()


# ----- fuzzing --------------------------------------------------------------------------------
NAMES = st.sampled_from(["dense", "sparse", "probability", "", "x" * 300])
DATATYPES = st.sampled_from(["FP32", "INT64", "FP16", "BYTES", "BOOL", "UINT8", "nope", 5])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
SHAPES = st.one_of(
    st.lists(st.integers(min_value=-2, max_value=3000), max_size=4),
    JSON_VALUES,
)
TENSORS = st.fixed_dictionaries(
    {"name": NAMES, "datatype": DATATYPES, "shape": SHAPES},
    optional={
        "data": st.one_of(
            st.lists(st.integers(min_value=-(2**63), max_value=2**64), max_size=30),
            st.lists(st.floats(width=32), max_size=30),
            JSON_VALUES,
        ),
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.integers(min_value=-4, max_value=300)}),
            JSON_VALUES,
        ),
    },
)
REQUESTS = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(TENSORS, max_size=3), JSON_VALUES)},
    optional={
        "outputs": st.one_of(
            st.lists(st.fixed_dictionaries({"name": NAMES}), max_size=2), JSON_VALUES
        ),
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_output": st.booleans()}), JSON_VALUES
        ),
        "id": JSON_VALUES,
    },
)


@st.composite
def near_valid(draw: st.DrawFn) -> Body:
    """Right names, shapes and counts, random values: these reach the model itself."""
    rows = draw(st.integers(min_value=1, max_value=3))
    dense = draw(st.lists(st.floats(width=32), min_size=13 * rows, max_size=13 * rows))
    sparse = draw(
        st.lists(
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            min_size=26 * rows,
            max_size=26 * rows,
        )
    )
    return {
        "inputs": [
            {"name": "dense", "shape": [rows, 13], "datatype": "FP32", "data": dense},
            {"name": "sparse", "shape": [rows, 26], "datatype": "INT64", "data": sparse},
        ]
    }


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    request=st.one_of(REQUESTS, near_valid(), JSON_VALUES),
    tail=st.binary(max_size=300),
    header=st.one_of(
        st.none(), st.integers(min_value=-5, max_value=2000), st.text("0123456789-x ", max_size=4)
    ),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_random_and_malformed_bodies_never_get_a_5xx(
    server: BackgroundServer, request: Any, tail: bytes, header: Any, raw: bytes | None
) -> None:
    if raw is not None:
        body = raw
    else:
        try:
            body = json.dumps(request).encode() + tail
        except (ValueError, OverflowError):
            body = tail
    headers = {} if header is None else {codec.HEADER_LENGTH: str(header)}
    status, answer = post(server, body, headers)
    assert status < 500, answer
    if status != 200:
        assert isinstance(answer, dict) and answer["error"], answer


def test_server_survives_the_fuzzing(
    server: BackgroundServer, sample: dict[str, np.ndarray]
) -> None:
    assert_serving(server, sample)
    stats = server.core.models["ranker"].stats.to_dict()
    assert stats["inference_stats"]["fail"]["count"] > 0  # the bad requests were counted


def test_inputs_declared_same_shape_must_agree_before_reaching_the_runner(
    encoder_small: ModelHandle,
) -> None:
    """attention_mask is declared `same_shape_as = "input_ids"`: a mismatch is a clear 400."""
    spec = codec.ModelSpec("encoder", "1", encoder_small.inputs, encoder_small.outputs, 64)

    def body(mask_len: int) -> bytes:
        return json.dumps(
            {
                "inputs": [
                    {"name": "input_ids", "shape": [1, 4], "datatype": "INT64", "data": [5] * 4},
                    {
                        "name": "attention_mask",
                        "shape": [1, mask_len],
                        "datatype": "INT64",
                        "data": [1] * mask_len,
                    },
                ]
            }
        ).encode()

    assert codec.decode_http(spec, body(4), None).rows == 1
    with pytest.raises(InputError, match=r"'attention_mask' has shape \[1, 3\], but it must match"):
        codec.decode_http(spec, body(3), None)
