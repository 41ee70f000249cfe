"""Tensors on the wire: KServe v2 JSON, Triton's binary tensor extension, and gRPC messages.

Server side, `decode_http` / `decode_grpc` turn a request into checked numpy arrays or raise
one InputError that names the problem; `encode_http` / `encode_grpc` build the response.
Client side (RemoteTarget, RemoteRunner), `encode_http_request` / `decode_http_response`
speak the same binary format.

Binary layout (Triton's extension): the JSON header comes first and its length travels in
the `Inference-Header-Content-Length` HTTP header; raw little-endian row-major tensors
follow in input (or output) order, each sized by its `binary_data_size` parameter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lab.errors import InputError, ServeError
from lab.repository import NUMPY_TO_TRITON, TRITON_TO_NUMPY, TensorSpec, check_same_shapes

HEADER_LENGTH = "Inference-Header-Content-Length"

# Datatypes with a fixed item size (BYTES is variable-length and not served).
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(numpy_name).newbyteorder("<")
    for name, numpy_name in TRITON_TO_NUMPY.items()
    if name != "BYTES"
}

# gRPC InferTensorContents field for each datatype (FP16 has none: raw contents only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

# Request parameters for features this server does not have: a clear 400, not silence.
_UNSUPPORTED_PARAMETERS = {
    "sequence_id": "sequence batching",
    "sequence_start": "sequence batching",
    "sequence_end": "sequence batching",
    "shared_memory_region": "shared memory",
    "shared_memory_byte_size": "shared memory",
    "shared_memory_offset": "shared memory",
    "classification": "the classification extension",
}


@dataclass(frozen=True)
class ModelSpec:
    """What decoding needs to know about a served model."""

    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int

    def input_names(self) -> str:
        return ", ".join(s.name for s in self.inputs)

    def output_names(self) -> str:
        return ", ".join(s.name for s in self.outputs)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded, checked request: arrays match the model's specs; `rows` is the batch size."""

    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    rows: int
    id: str | None = None
    timeout_s: float | None = None


# ----- checks shared by every transport ---------------------------------------------------
def _check_shape(spec: TensorSpec, shape: Any, max_batch_size: int) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InputError(f"input {spec.name!r}: shape must be a list of integers, got {shape!r}")
    dims = tuple(int(d) for d in shape)
    spec.check_shape(dims)
    if any(d < 1 for d in dims):
        raise InputError(
            f"input {spec.name!r} has shape {list(dims)}: every dimension must be at least 1"
        )
    if dims[0] > max_batch_size:
        raise InputError(
            f"input {spec.name!r} has batch size {dims[0]}, over the model's max_batch_size "
            f"{max_batch_size}"
        )
    return dims


def _check_datatype(spec: TensorSpec, datatype: Any) -> np.dtype:
    if datatype != spec.datatype:
        raise InputError(f"input {spec.name!r} has datatype {datatype!r}, expected {spec.datatype}")
    return DTYPES[spec.datatype]


def _check_inputs(model: ModelSpec, arrays: dict[str, np.ndarray]) -> int:
    """All inputs present; one batch size across them; values within the model's declared
    limits (lab.limits). Returns the batch size."""
    for spec in model.inputs:
        if spec.name not in arrays:
            raise InputError(
                f"missing input {spec.name!r} (model {model.name} needs {model.input_names()})"
            )
    rows = -1
    for spec in model.inputs:
        n = arrays[spec.name].shape[0]
        if rows == -1:
            rows = n
        elif n != rows:
            raise InputError(
                f"input {spec.name!r} has batch size {n}, but {model.inputs[0].name!r} has {rows}"
            )
    check_same_shapes(model.inputs, {name: a.shape for name, a in arrays.items()})
    for spec in model.inputs:  # value limits last: the cheap structural checks come first
        spec.check_values(arrays[spec.name])
    return rows


def _input_spec(model: ModelSpec, name: Any, seen: set[str]) -> TensorSpec:
    if not isinstance(name, str):
        raise InputError(f"input name must be a string, got {name!r}")
    for spec in model.inputs:
        if spec.name == name:
            if name in seen:
                raise InputError(f"input {name!r} appears more than once")
            seen.add(name)
            return spec
    raise InputError(
        f"unknown input {name!r} (model {model.name} has inputs {model.input_names()})"
    )


def _timeout_s(value: Any) -> float | None:
    """Triton's `timeout` request parameter: microseconds, 0 for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"parameter 'timeout' must be a non-negative integer (us), got {value!r}")
    return value / 1e6 if value else None


def _reject_unsupported(parameters: Mapping[str, Any], where: str) -> None:
    for key in parameters:
        if key in _UNSUPPORTED_PARAMETERS:
            raise InputError(
                f"{where} parameter {key!r}: {_UNSUPPORTED_PARAMETERS[key]} is not supported "
                "by this server"
            )


def _frombuffer(buffer: bytes | memoryview, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    if not array.flags.aligned:  # a misaligned view is legal numpy but not every backend's
        array = array.copy()
    return array


# ----- JSON data --------------------------------------------------------------------------
def _array_from_json(spec: TensorSpec, data: Any, dims: tuple[int, ...]) -> np.ndarray:
    count = math.prod(dims)
    if not isinstance(data, list):
        raise InputError(f"input {spec.name!r}: 'data' must be a list, got {type(data).__name__}")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InputError(
            f"input {spec.name!r}: 'data' must be a flat or evenly nested list of numbers"
        ) from None
    if raw.size != count:
        raise InputError(
            f"input {spec.name!r} has {raw.size} data elements, but shape {list(dims)} "
            f"needs {count}"
        )
    dtype = DTYPES[spec.datatype]
    kind = raw.dtype.kind
    if dtype.kind in "iu":
        if kind == "O" and all(type(v) is int for v in raw.flat):  # beyond 64 bits
            raise InputError(f"input {spec.name!r} has values outside the {spec.datatype} range")
        if kind not in "iu":
            raise InputError(f"input {spec.name!r} ({spec.datatype}) needs integer data")
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise InputError(f"input {spec.name!r} has values outside the {spec.datatype} range")
    elif dtype.kind == "f":
        if kind not in "iuf":
            raise InputError(f"input {spec.name!r} ({spec.datatype}) needs numeric data")
    elif dtype.kind == "b" and kind != "b":
        raise InputError(f"input {spec.name!r} (BOOL) needs true/false data")
    with np.errstate(over="ignore"):  # an FP32 input given 1e39 becomes inf, as Triton does
        return raw.astype(dtype.newbyteorder("="), copy=False).reshape(dims)


# ----- HTTP server side -------------------------------------------------------------------
def parse_header_length(value: str | None, body_size: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InputError(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if length < 0 or length > body_size:
        raise InputError(f"{HEADER_LENGTH} is {length}, but the body has {body_size} bytes")
    return length


def _parse_json_object(text: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        value = json.loads(bytes(text).decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"malformed JSON in {what}: not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise InputError(f"malformed JSON in {what}: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = entry.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InputError(f"{where}: 'parameters' must be a JSON object")
    return params


def _requested_outputs(
    model: ModelSpec, entries: Any, default_binary: bool
) -> list[RequestedOutput]:
    if entries is None:
        return [RequestedOutput(s.name, default_binary) for s in model.outputs]
    if not isinstance(entries, list):
        raise InputError("'outputs' must be a list")
    known = {s.name for s in model.outputs}
    wanted: list[RequestedOutput] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputError("each entry of 'outputs' must be an object with a string 'name'")
        name = entry["name"]
        if name not in known:
            raise InputError(
                f"unknown output {name!r} (model {model.name} has outputs {model.output_names()})"
            )
        if any(w.name == name for w in wanted):
            raise InputError(f"output {name!r} is requested more than once")
        params = _parameters(entry, f"output {name!r}")
        _reject_unsupported(params, f"output {name!r}")
        binary = params.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise InputError(f"output {name!r}: 'binary_data' must be true or false")
        wanted.append(RequestedOutput(name, binary))
    return wanted or [RequestedOutput(s.name, default_binary) for s in model.outputs]


def decode_http(model: ModelSpec, body: bytes, header_length: int | None) -> InferRequest:
    """Decode a KServe v2 REST infer body (JSON, or JSON + binary tensors)."""
    view = memoryview(body)
    json_end = len(body) if header_length is None else header_length
    request = _parse_json_object(view[:json_end], "the request body")
    params = _parameters(request, "request")
    _reject_unsupported(params, "request")
    default_binary = params.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise InputError("parameter 'binary_data_output' must be true or false")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"'id' must be a string, got {type(request_id).__name__}")
    entries = request.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise InputError("'inputs' must be a non-empty list")
    arrays: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    offset = json_end
    for entry in entries:
        if not isinstance(entry, dict):
            raise InputError("each entry of 'inputs' must be a JSON object")
        spec = _input_spec(model, entry.get("name"), seen)
        dtype = _check_datatype(spec, entry.get("datatype"))
        dims = _check_shape(spec, entry.get("shape"), model.max_batch_size)
        tensor_params = _parameters(entry, f"input {spec.name!r}")
        _reject_unsupported(tensor_params, f"input {spec.name!r}")
        size = tensor_params.get("binary_data_size")
        if size is None:
            if "data" not in entry:
                raise InputError(f"input {spec.name!r} has neither 'data' nor binary_data_size")
            arrays[spec.name] = _array_from_json(spec, entry["data"], dims)
            continue
        if "data" in entry:
            raise InputError(f"input {spec.name!r} has both 'data' and binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InputError(
                f"input {spec.name!r}: binary_data_size must be a non-negative integer"
            )
        count = math.prod(dims)
        if size != count * dtype.itemsize:
            raise InputError(
                f"input {spec.name!r} has binary_data_size {size}, but shape {list(dims)} of "
                f"{spec.datatype} needs {count * dtype.itemsize} bytes"
            )
        if header_length is None:
            raise InputError(
                f"input {spec.name!r} uses binary data but the request has no {HEADER_LENGTH} "
                "header"
            )
        if offset + size > len(body):
            raise InputError(
                f"binary data for input {spec.name!r} ends at byte {offset + size - json_end} "
                f"but the request carries only {len(body) - json_end} bytes after the JSON header"
            )
        arrays[spec.name] = _frombuffer(body, dtype, offset, count).reshape(dims)
        offset += size
    if offset != len(body) and header_length is not None:
        raise InputError(
            f"the request carries {len(body) - offset} bytes of binary data that no input claims"
        )
    rows = _check_inputs(model, arrays)
    return InferRequest(
        inputs=arrays,
        outputs=_requested_outputs(model, request.get("outputs"), default_binary),
        rows=rows,
        id=request_id,
        timeout_s=_timeout_s(params.get("timeout")),
    )


def encode_http(
    model: ModelSpec,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary tensors follow it."""
    header: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.id is not None:
        header["id"] = request.id
    if parameters:
        header["parameters"] = dict(parameters)
    specs = {s.name: s for s in model.outputs}
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for wanted in request.outputs:
        spec = specs[wanted.name]
        array = np.ascontiguousarray(outputs[wanted.name], dtype=DTYPES[spec.datatype])
        tensor: dict[str, Any] = {
            "name": spec.name,
            "datatype": spec.datatype,
            "shape": list(array.shape),
        }
        if wanted.binary:
            chunk = array.tobytes()
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    header["outputs"] = tensors
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


# ----- gRPC server side -------------------------------------------------------------------
def parameter_value(param: Any) -> Any:
    """The Python value of an inference.InferParameter."""
    choice = param.WhichOneof("parameter_choice")
    return None if choice is None else getattr(param, choice)


def decode_grpc(model: ModelSpec, message: Any) -> InferRequest:
    """Decode an inference.ModelInferRequest (typed contents or raw_input_contents)."""
    params = {k: parameter_value(v) for k, v in message.parameters.items()}
    _reject_unsupported(params, "request")
    raw = message.raw_input_contents
    if not message.inputs:
        raise InputError("the request has no inputs")
    if raw and len(raw) != len(message.inputs):
        raise InputError(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
        )
    arrays: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for i, tensor in enumerate(message.inputs):
        spec = _input_spec(model, tensor.name, seen)
        dtype = _check_datatype(spec, tensor.datatype)
        dims = _check_shape(spec, list(tensor.shape), model.max_batch_size)
        tensor_params = {k: parameter_value(v) for k, v in tensor.parameters.items()}
        _reject_unsupported(tensor_params, f"input {spec.name!r}")
        count = math.prod(dims)
        field = CONTENTS_FIELD.get(spec.datatype)
        if raw:
            if tensor.HasField("contents") and any(
                len(getattr(tensor.contents, f)) for f in set(CONTENTS_FIELD.values())
            ):
                raise InputError(
                    f"input {spec.name!r} has typed contents but the request uses "
                    "raw_input_contents"
                )
            data = raw[i]
            if len(data) != count * dtype.itemsize:
                raise InputError(
                    f"input {spec.name!r} has {len(data)} bytes of raw contents, but shape "
                    f"{list(dims)} of {spec.datatype} needs {count * dtype.itemsize}"
                )
            arrays[spec.name] = _frombuffer(data, dtype, 0, count).reshape(dims)
            continue
        if field is None:
            raise InputError(f"input {spec.name!r} ({spec.datatype}) must use raw_input_contents")
        values = getattr(tensor.contents, field)
        if len(values) != count:
            raise InputError(
                f"input {spec.name!r} has {len(values)} values in {field}, but shape "
                f"{list(dims)} needs {count}"
            )
        try:
            arrays[spec.name] = np.array(values, dtype=dtype.newbyteorder("=")).reshape(dims)
        except OverflowError:
            raise InputError(
                f"input {spec.name!r} has values outside the {spec.datatype} range"
            ) from None
    rows = _check_inputs(model, arrays)
    known = {s.name for s in model.outputs}
    wanted: list[RequestedOutput] = []
    for out in message.outputs:
        if out.name not in known:
            raise InputError(
                f"unknown output {out.name!r} (model {model.name} has outputs "
                f"{model.output_names()})"
            )
        if any(w.name == out.name for w in wanted):
            raise InputError(f"output {out.name!r} is requested more than once")
        _reject_unsupported(
            {k: parameter_value(v) for k, v in out.parameters.items()}, f"output {out.name!r}"
        )
        wanted.append(RequestedOutput(out.name, True))
    if not wanted:
        wanted = [RequestedOutput(s.name, True) for s in model.outputs]
    request_id = message.id or None
    return InferRequest(arrays, wanted, rows, request_id, _timeout_s(params.get("timeout")))


def set_parameter(target: Any, key: str, value: Any) -> None:
    """Set map<string, InferParameter>[key] from a Python value."""
    param = target[key]
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def encode_grpc(
    response: Any,
    model: ModelSpec,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
) -> Any:
    """Fill an inference.ModelInferResponse; tensors travel in raw_output_contents."""
    response.model_name = model.name
    response.model_version = model.version
    if request.id:
        response.id = request.id
    for key, value in (parameters or {}).items():
        set_parameter(response.parameters, key, value)
    specs = {s.name: s for s in model.outputs}
    for wanted in request.outputs:
        spec = specs[wanted.name]
        array = np.ascontiguousarray(outputs[wanted.name], dtype=DTYPES[spec.datatype])
        tensor = response.outputs.add()
        tensor.name = spec.name
        tensor.datatype = spec.datatype
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


# ----- client side ------------------------------------------------------------------------
def encode_http_request(
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str] = (),
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int]:
    """A binary infer request: (body, JSON header length). Outputs come back binary too."""
    tensors = []
    chunks = []
    for name, value in inputs.items():
        array = np.ascontiguousarray(value)
        datatype = NUMPY_TO_TRITON.get(array.dtype.name)
        if datatype is None or datatype == "BYTES":
            raise InputError(f"input {name!r} has dtype {array.dtype}, which has no wire format")
        chunk = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        tensors.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(chunk)},
            }
        )
        chunks.append(chunk)
    header: dict[str, Any] = {"inputs": tensors}
    if request_id is not None:
        header["id"] = request_id
    params = {"binary_data_output": True, **(parameters or {})}
    header["parameters"] = params
    if output_names:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in output_names]
    text = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([text, *chunks]), len(text)


def decode_http_response(
    body: bytes, header_length: str | int | None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A server's infer response -> (outputs, response parameters)."""
    try:
        end = len(body) if header_length is None else int(header_length)
        header = json.loads(body[:end])
        outputs: dict[str, np.ndarray] = {}
        offset = end
        for tensor in header["outputs"]:
            dtype = DTYPES[tensor["datatype"]]
            shape = tuple(int(d) for d in tensor["shape"])
            size = (tensor.get("parameters") or {}).get("binary_data_size")
            if size is None:
                array = np.asarray(tensor["data"], dtype=dtype).reshape(shape)
            else:
                array = np.frombuffer(body, dtype, math.prod(shape), offset).reshape(shape)
                offset += int(size)
            outputs[tensor["name"]] = array
        return outputs, dict(header.get("parameters") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise ServeError(f"the server sent a malformed infer response: {exc}") from None


def error_message(body: bytes) -> str:
    """The `error` field of a server's error body, or the body itself."""
    try:
        value = json.loads(body)
        if isinstance(value, dict) and isinstance(value.get("error"), str):
            return value["error"]
    except ValueError:
        pass
    return body[:500].decode("utf-8", "replace") or "(empty body)"
