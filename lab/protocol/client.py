"""Client-side helpers shared by RemoteTarget (async) and RemoteRunner (sync).

`parse_url` splits `http://host:port` / `grpc://host:port`; `error_for_http` and
`error_for_grpc` turn a server's answer into the LabError it stands for; `grpc_request` and
`grpc_outputs` build and read ModelInfer messages with raw (binary) contents.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from lab.batcher import QueueTimeout
from lab.errors import ConfigError, InputError, LabError, ModelNotFound, Overloaded, ServeError
from lab.protocol.codec import DTYPES, parameter_value
from lab.repository import NUMPY_TO_TRITON, ModelHandle

TOKEN_ENV = "SERVELAB_AUTH_TOKEN"


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "http" or "grpc"
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.address}"


def parse_url(url: str) -> Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "grpc") or not parts.hostname:
        raise ConfigError(f"server url {url!r} must look like http://HOST:PORT or grpc://HOST:PORT")
    if parts.path not in ("", "/"):
        raise ConfigError(f"server url {url!r} must not have a path")
    try:
        port = parts.port or (8000 if parts.scheme == "http" else 8001)
    except ValueError:
        raise ConfigError(f"server url {url!r} has a bad port") from None
    return Endpoint(parts.scheme, parts.hostname, port)


def auth_token(token: str | None = None) -> str | None:
    """An explicit token, else $SERVELAB_AUTH_TOKEN, else none."""
    return token if token is not None else (os.environ.get(TOKEN_ENV) or None)


def error_for_http(status: int, message: str, url: str) -> LabError:
    text = f"{url}: {message}"
    if status in (400, 413):
        return InputError(text)
    if status == 404:
        return ModelNotFound(text)
    if status == 503:
        return Overloaded(text) if "queue is full" in message else ServeError(text)
    if status == 504:
        return QueueTimeout(text)
    return ServeError(f"{url} answered HTTP {status}: {message}")


def error_for_grpc(code_name: str, message: str, url: str) -> LabError:
    text = f"{url}: {message}"
    if code_name == "INVALID_ARGUMENT":
        return InputError(text)
    if code_name == "NOT_FOUND":
        return ModelNotFound(text)
    if code_name == "UNAVAILABLE":
        return Overloaded(text) if "queue is full" in message else ServeError(text)
    if code_name == "DEADLINE_EXCEEDED":
        return QueueTimeout(text)
    return ServeError(f"{url} answered gRPC {code_name}: {message}")


def check_metadata(handle: ModelHandle, meta: Mapping[str, Any], url: str) -> None:
    """The server's model must take the inputs and give the outputs this handle describes."""
    for kind, specs in (("inputs", handle.inputs), ("outputs", handle.outputs)):
        served = {t["name"]: t["datatype"] for t in meta.get(kind, [])}
        expected = {s.name: s.datatype for s in specs}
        if served != expected:
            raise ConfigError(
                f"{url} serves model {handle.name} with {kind} {served}, expected {expected}"
            )


def grpc_request(pb: Any, model: str, inputs: Mapping[str, np.ndarray]) -> Any:
    request = pb.ModelInferRequest(model_name=model)
    for name, value in inputs.items():
        array = np.ascontiguousarray(value)
        datatype = NUMPY_TO_TRITON.get(array.dtype.name)
        if datatype is None or datatype == "BYTES":
            raise InputError(f"input {name!r} has dtype {array.dtype}, which has no wire format")
        tensor = request.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def grpc_outputs(response: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    outputs: dict[str, np.ndarray] = {}
    try:
        for i, tensor in enumerate(response.outputs):
            shape = tuple(tensor.shape)
            dtype = DTYPES[tensor.datatype]
            raw = response.raw_output_contents[i]
            outputs[tensor.name] = np.frombuffer(raw, dtype, math.prod(shape)).reshape(shape)
    except (KeyError, IndexError, ValueError) as exc:
        raise ServeError(f"the server sent a malformed infer response: {exc}") from None
    params = {k: parameter_value(v) for k, v in response.parameters.items()}
    return outputs, params
