"""A runner whose backend is a server: synchronous infer over KServe v2 REST or gRPC.

    servelab verify --runner lab.runners.remote:RemoteRunner \
        --runner-option url=http://127.0.0.1:8000

Options: url (http://HOST:PORT or grpc://HOST:PORT; the protocol follows the scheme),
timeout_s (per request, default 30), model (the served name, default the handle's),
token (bearer token; default $SERVELAB_AUTH_TOKEN). `load` checks that the server serves the
model with the same inputs and outputs. Tensors travel in binary (REST) or raw contents (gRPC).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from lab.errors import RunnerError, ServeError
from lab.protocol import client, codec
from lab.repository import ModelHandle
from lab.runners.base import Runner


class RemoteRunner(Runner):
    name = "remote"
    may_stall = True

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        timeout_s: float = 30.0,
        model: str | None = None,
        token: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url=url, timeout_s=timeout_s, model=model, **options)
        self.endpoint = client.parse_url(str(url))
        self.timeout_s = float(timeout_s)
        self._served_name = model
        self._token = client.auth_token(token)
        self._conn: http.client.HTTPConnection | None = None
        self._channel: Any = None
        self._stub: Any = None
        self._pb: Any = None
        self._output_names: list[str] = []
        self._server_meta: dict[str, Any] = {}

    @property
    def served_name(self) -> str:
        assert self._served_name is not None
        return self._served_name

    # ----- HTTP ------------------------------------------------------------------------
    def _http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        all_headers = dict(headers or {})
        if self._token:
            all_headers["Authorization"] = f"Bearer {self._token}"
        for attempt in range(2):  # one retry on a keep-alive connection the server closed
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    self.endpoint.host, self.endpoint.port, timeout=self.timeout_s
                )
            try:
                self._conn.request(method, path, body=body, headers=all_headers)
                response = self._conn.getresponse()
                return response.status, response.read(), response
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._conn.close()
                self._conn = None
                if attempt == 1:
                    raise ServeError(f"{self.endpoint.url} closed the connection") from None
            except OSError as exc:
                self._conn.close()
                self._conn = None
                raise ServeError(f"cannot reach {self.endpoint.url}: {exc}") from None
        raise AssertionError("unreachable")

    def _http_json(self, path: str) -> dict[str, Any]:
        status, body, _ = self._http("GET", path)
        if status != 200:
            raise client.error_for_http(status, codec.error_message(body), self.endpoint.url)
        value = json.loads(body)
        if not isinstance(value, dict):
            raise ServeError(f"{self.endpoint.url}{path} did not answer with a JSON object")
        return value

    # ----- gRPC ------------------------------------------------------------------------
    def _grpc(self, method: Any, request: Any) -> Any:
        import grpc

        metadata = (("authorization", f"Bearer {self._token}"),) if self._token else ()
        try:
            return method(request, timeout=self.timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            details = str(exc.details())  # type: ignore[attr-defined]
            raise client.error_for_grpc(code.name, details, self.endpoint.url) from None

    # ----- hooks -----------------------------------------------------------------------
    def load_impl(self, model: ModelHandle) -> None:
        if self._served_name is None:
            self._served_name = model.name
        self._output_names = [s.name for s in model.outputs]
        if self.endpoint.protocol == "http":
            self._server_meta = self._http_json("/v2")
            meta = self._http_json(f"/v2/models/{self.served_name}")
        else:
            import grpc

            from lab.protocol._proto import inference_pb2, inference_pb2_grpc

            self._pb = inference_pb2
            self._channel = grpc.insecure_channel(
                self.endpoint.address, options=[("grpc.max_receive_message_length", -1)]
            )
            self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)
            server = self._grpc(self._stub.ServerMetadata, inference_pb2.ServerMetadataRequest())
            self._server_meta = {"name": server.name, "version": server.version}
            reply = self._grpc(
                self._stub.ModelMetadata, inference_pb2.ModelMetadataRequest(name=self.served_name)
            )
            meta = {
                "inputs": [{"name": t.name, "datatype": t.datatype} for t in reply.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype} for t in reply.outputs],
            }
        try:
            client.check_metadata(model, meta, self.endpoint.url)
        except Exception as exc:
            raise RunnerError(str(exc)) from None

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if self.endpoint.protocol == "grpc":
            request = client.grpc_request(self._pb, self.served_name, inputs)
            outputs, _ = client.grpc_outputs(self._grpc(self._stub.ModelInfer, request))
            return outputs
        body, header_length = codec.encode_http_request(inputs, self._output_names)
        status, payload, response = self._http(
            "POST",
            f"/v2/models/{self.served_name}/infer",
            body,
            {codec.HEADER_LENGTH: str(header_length), "Content-Type": "application/octet-stream"},
        )
        if status != 200:
            raise client.error_for_http(status, codec.error_message(payload), self.endpoint.url)
        outputs, _ = codec.decode_http_response(payload, response.getheader(codec.HEADER_LENGTH))
        return outputs

    def close_impl(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["server"] = self._server_meta
        return info
