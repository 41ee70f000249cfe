"""Value limits from config.toml: every out-of-range input is a 400 / INVALID_ARGUMENT naming
the input, the offending index and the allowed range, decided before the batcher: no runner
is called, no fallback or failure counter moves."""

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
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from lab.errors import ConfigError, InputError
from lab.limits import ValueLimits
from lab.repository import ModelHandle, parse_config
from lab.runners.onnxruntime import OnnxRuntimeRunner
from lab.serve.app import BackgroundServer
from lab.serve.config import ServeConfig
from lab.serve.faults import FaultyRunner
from lab.workload import Workload

ORT = {"intra_op_threads": 1}
COUNTING = "lab.serve.faults:FaultyRunner"  # counts its calls; fails only when told to


# ----- the limits on their own -----------------------------------------------------------------
def test_limits_name_the_first_offending_index_and_the_range() -> None:
    limits = ValueLimits(low=0, high=(10,))
    limits.check("ids", np.array([[0, 9, 3]]))
    with pytest.raises(InputError, match=r"'ids' at index \[0, 2\]: value -1 .* range \[0, 10\)"):
        limits.check("ids", np.array([[0, 9, -1]]))
    with pytest.raises(InputError, match=r"'ids' at index \[1, 0\]: value 10 .* range \[0, 10\)"):
        limits.check("ids", np.array([[0, 1], [10, 2]]))


def test_per_column_bounds_check_each_column_against_its_own_table() -> None:
    limits = ValueLimits(low=0, high=(5, 3))
    limits.check("sparse", np.array([[4, 2]]))
    with pytest.raises(InputError, match=r"index \[0, 1\]: value 3 .* range \[0, 3\)"):
        limits.check("sparse", np.array([[4, 3]]))


def test_finite_rejects_nan_and_infinity() -> None:
    limits = ValueLimits(finite=True)
    limits.check("dense", np.zeros((2, 3), np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        array = np.zeros((2, 3), np.float32)
        array[1, 2] = bad
        with pytest.raises(InputError, match=r"'dense' at index \[1, 2\].*not finite"):
            limits.check("dense", array)


def test_config_bounds_name_size_config_fields(encoder_small: ModelHandle) -> None:
    ids, mask = encoder_small.inputs
    size = encoder_small.size_config
    assert ids.limits == ValueLimits(low=0, high=(size.vocab,))
    assert ids.max_shape == (-1, size.max_seq_len)
    assert mask.limits == ValueLimits(low=0, high=(2,))


def test_a_bound_that_is_not_a_size_field_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'name = "m"\nmax_batch_size = 4\nslo_ms = 1.0\n'
        '[[input]]\nname = "x"\ndatatype = "INT64"\ndims = [3]\nbelow = "nope"\n'
    )
    with pytest.raises(ConfigError, match="bound 'nope' is not a field of the size config"):
        parse_config(path, object())


def test_the_runner_base_class_applies_the_same_limits(ranker_small: ModelHandle) -> None:
    sample = Workload(ranker_small).samples(1, stream="limits-runner")[0]
    bad = {**sample, "sparse": sample["sparse"].copy()}
    bad["sparse"][0, 4] = ranker_small.size_config.table_rows[4]
    with OnnxRuntimeRunner(**ORT) as runner:
        runner.load(ranker_small)
        runner.infer(sample)
        with pytest.raises(InputError, match=r"'sparse' at index \[0, 4\]: value 305 .*\[0, 305\)"):
            runner.infer(bad)


# ----- the server ------------------------------------------------------------------------------
def _config(model: str) -> ServeConfig:
    return ServeConfig(
        model=(model,),
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        runner=COUNTING,
        runner_options=ORT,
        fallback_runner=COUNTING,
        fallback_options=ORT,
        max_queue_delay_us=0,
        export=False,
        # The drift monitor computes its reference outputs with the fallback runner after
        # start-up; these tests count every runner call, so it stays off here.
        drift=False,
    )


@pytest.fixture(scope="module")
def encoder_server(encoder_small: ModelHandle) -> Iterator[BackgroundServer]:
    with BackgroundServer(_config("encoder")) as srv:
        yield srv


@pytest.fixture(scope="module")
def ranker_server(ranker_small: ModelHandle) -> Iterator[BackgroundServer]:
    with BackgroundServer(_config("ranker")) as srv:
        yield srv


def _post_json(server: BackgroundServer, model: str, sample: dict[str, np.ndarray]) -> Any:
    body = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": np_to_triton_dtype(array.dtype),
                "data": array.ravel().tolist(),
            }
            for name, array in sample.items()
        ]
    }
    text = json.dumps(body)  # a NaN goes out as the bare token NaN, which the server parses
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/{model}/infer", data=text.encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _grpc_error(server: BackgroundServer, model: str, sample: dict[str, np.ndarray]) -> Any:
    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    inputs = []
    for name, array in sample.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs)
    return info.value


def _counters(server: BackgroundServer, model: str) -> tuple[int, int, int, dict[str, Any]]:
    state = server.core.models[model]
    assert isinstance(state.primary, FaultyRunner) and isinstance(state.fallback, FaultyRunner)
    stats = state.stats.to_dict()
    return state.primary.calls, state.fallback.calls, state.breaker.total_failures, stats


def _assert_rejected_without_a_runner_call(
    server: BackgroundServer, model: str, sample: dict[str, np.ndarray], message: str
) -> None:
    before = _counters(server, model)
    status, body = _post_json(server, model, sample)
    assert status == 400, body
    assert message in body["error"], body["error"]
    error = _grpc_error(server, model, sample)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.message()
    after = _counters(server, model)
    assert after[0] == before[0], "the primary runner was called"
    assert after[1] == before[1], "the fallback runner was called"
    assert after[2] == before[2], "the breaker counted a primary failure"
    assert after[3]["fallback_requests"] == before[3]["fallback_requests"]
    assert server.core.models[model].degraded is False


def _encoder_sample(handle: ModelHandle) -> dict[str, np.ndarray]:
    sample = Workload(handle).samples(1, stream="limits-encoder")[0]
    return {k: v.copy() for k, v in sample.items()}


def test_negative_token_id_is_rejected_before_the_runner(
    encoder_server: BackgroundServer, encoder_small: ModelHandle
) -> None:
    sample = _encoder_sample(encoder_small)
    sample["input_ids"][0, 3] = -5
    vocab = encoder_small.size_config.vocab
    _assert_rejected_without_a_runner_call(
        encoder_server,
        "encoder",
        sample,
        f"input 'input_ids' at index [0, 3]: value -5 is outside the allowed range [0, {vocab})",
    )


def test_token_id_equal_to_the_vocabulary_size_is_rejected(
    encoder_server: BackgroundServer, encoder_small: ModelHandle
) -> None:
    sample = _encoder_sample(encoder_small)
    vocab = encoder_small.size_config.vocab
    sample["input_ids"][0, -1] = vocab
    last = sample["input_ids"].shape[1] - 1
    _assert_rejected_without_a_runner_call(
        encoder_server,
        "encoder",
        sample,
        f"at index [0, {last}]: value {vocab} is outside the allowed range [0, {vocab})",
    )


def test_a_sequence_longer_than_the_model_maximum_is_rejected(
    encoder_server: BackgroundServer, encoder_small: ModelHandle
) -> None:
    longest = encoder_small.size_config.max_seq_len
    sample = {
        "input_ids": np.full((1, longest + 1), 5, np.int64),
        "attention_mask": np.ones((1, longest + 1), np.int64),
    }
    _assert_rejected_without_a_runner_call(
        encoder_server,
        "encoder",
        sample,
        f"axis 1 is {longest + 1} long, over the model's maximum of {longest}",
    )


def test_a_ranker_id_outside_its_table_is_rejected(
    ranker_server: BackgroundServer, ranker_small: ModelHandle
) -> None:
    sample = Workload(ranker_small).samples(1, stream="limits-ranker")[0]
    sample = {k: v.copy() for k, v in sample.items()}
    rows = ranker_small.size_config.table_rows[8]  # a 3-row table: id 3 fits every other one
    sample["sparse"][0, 8] = rows
    _assert_rejected_without_a_runner_call(
        ranker_server,
        "ranker",
        sample,
        f"input 'sparse' at index [0, 8]: value {rows} is outside the allowed range [0, {rows})",
    )


def test_a_nan_dense_feature_is_rejected(
    ranker_server: BackgroundServer, ranker_small: ModelHandle
) -> None:
    sample = Workload(ranker_small).samples(1, stream="limits-nan")[0]
    sample = {k: v.copy() for k, v in sample.items()}
    sample["dense"][0, 6] = np.nan
    _assert_rejected_without_a_runner_call(
        ranker_server, "ranker", sample, "input 'dense' at index [0, 6]: value nan is not finite"
    )


def test_valid_requests_still_reach_the_primary(
    ranker_server: BackgroundServer, ranker_small: ModelHandle
) -> None:
    sample = Workload(ranker_small).samples(1, stream="limits-good")[0]
    before = _counters(ranker_server, "ranker")
    status, body = _post_json(ranker_server, "ranker", sample)
    assert status == 200, body
    assert body["parameters"]["servelab_runner"] == "primary"
    assert _counters(ranker_server, "ranker")[0] == before[0] + 1


# ----- metrics: Triton's failure reasons and host gauges ---------------------------------------
def _metrics(server: BackgroundServer) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        return str(response.read().decode())


def _failures(text: str, reason: str) -> float:
    labels = f'model="ranker",reason="{reason}",version="1"'
    match = re.search(rf"^nv_inference_request_failure{{{labels}}} (\S+)$", text, re.M)
    assert match, reason
    return float(match.group(1))


def test_a_bad_input_counts_as_an_other_failure_and_cpu_gauges_are_served(
    ranker_server: BackgroundServer, ranker_small: ModelHandle
) -> None:
    before = _metrics(ranker_server)
    sample = Workload(ranker_small).samples(1, stream="limits-metrics")[0]
    sample = {k: v.copy() for k, v in sample.items()}
    sample["dense"][0, 0] = -1.0
    status, _ = _post_json(ranker_server, "ranker", sample)
    assert status == 400
    after = _metrics(ranker_server)
    assert _failures(after, "OTHER") == _failures(before, "OTHER") + 1
    for reason in ("REJECTED", "CANCELED", "BACKEND"):
        assert _failures(after, reason) == _failures(before, reason)
    utilization = re.search(r"^nv_cpu_utilization (\S+)$", after, re.M)
    total = re.search(r"^nv_cpu_memory_total_bytes (\S+)$", after, re.M)
    used = re.search(r"^nv_cpu_memory_used_bytes (\S+)$", after, re.M)
    assert utilization and total and used
    assert 0.0 <= float(utilization.group(1)) <= 1.0
    assert 0 < int(used.group(1)) < int(total.group(1))
