"""gRPC: `inference.GRPCInferenceService` on grpc.aio, sharing the REST server's event loop.

Status codes follow lab.serve.errors: INVALID_ARGUMENT for bad input, NOT_FOUND for an
unknown model, UNAVAILABLE when overloaded or shutting down, DEADLINE_EXCEEDED for a queue
timeout, UNAUTHENTICATED without the bearer token (`authorization: Bearer ...` metadata;
ServerLive and ServerReady never need it), INTERNAL when the model itself fails.

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer,
ModelConfig, ModelStatistics, RepositoryIndex (what tritonclient and perf_analyzer -i grpc
call). Left out, answered UNIMPLEMENTED: ModelStreamInfer (no decoupled models; perf_analyzer
uses it only with --streaming), RepositoryModelLoad / Unload (models are fixed at startup),
System / Cuda shared memory (tensors travel in the message), TraceSetting, LogSettings.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format

from lab.errors import ConfigError, LabError
from lab.protocol import codec
from lab.protocol._proto import inference_pb2 as pb
from lab.protocol._proto import inference_pb2_grpc as pb_grpc
from lab.serve.core import ModelServer, ModelState
from lab.serve.errors import Unauthorized, grpc_code_name

log = logging.getLogger("lab.serve")


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: ModelServer, token: str | None) -> None:
        self.server = server
        self._expected = f"Bearer {token}".encode() if token else b""

    async def _abort(self, context: Any, exc: LabError) -> NoReturn:
        await context.abort(getattr(grpc.StatusCode, grpc_code_name(exc)), str(exc))
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _authorize(self, context: Any) -> None:
        if not self._expected:
            return
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(got, self._expected):
                    return
        raise Unauthorized("missing or wrong bearer token (metadata authorization: Bearer ...)")

    def _model(self, context: Any, name: str, version: str) -> ModelState:
        self._authorize(context)
        return self.server.model(name, version)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.server.live)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.server.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            state = self._model(context, request.name, request.version)
        except LabError as exc:
            await self._abort(context, exc)
        return pb.ModelReadyResponse(ready=state.ready and not self.server.draining)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        try:
            self._authorize(context)
        except LabError as exc:
            await self._abort(context, exc)
        meta = self.server.metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            state = self._model(context, request.name, request.version)
        except LabError as exc:
            await self._abort(context, exc)
        meta = state.metadata()
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for spec in state.handle.inputs:
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
        for spec in state.handle.outputs:
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
        for key, value in meta["parameters"].items():
            codec.set_parameter(response.parameters, key, value)
        return response

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        try:
            state = self._model(context, request.name, request.version)
        except LabError as exc:
            await self._abort(context, exc)
        config = json_format.ParseDict(state.model_config(), pb.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        try:
            if request.name:
                states = [self._model(context, request.name, request.version)]
            else:
                self._authorize(context)
                states = list(self.server.models.values())
        except LabError as exc:
            await self._abort(context, exc)
        response = pb.ModelStatisticsResponse()
        for state in states:
            # The same numbers as REST; ServeLab's own keys (degraded, breaker...) stay there.
            json_format.ParseDict(
                state.statistics(), response.model_stats.add(), ignore_unknown_fields=True
            )
        return response

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        try:
            self._authorize(context)
        except LabError as exc:
            await self._abort(context, exc)
        response = pb.RepositoryIndexResponse()
        for entry in self.server.repository_index(request.ready):
            response.models.add(**entry)
        return response

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        received = time.perf_counter_ns()
        try:
            state = self._model(context, request.model_name, request.model_version)
        except LabError as exc:
            await self._abort(context, exc)
        answer = None
        try:
            with self.server.accepting():
                decoded = codec.decode_grpc(state.spec, request)
                answer = await self.server.infer(state, decoded)
                response = codec.encode_grpc(
                    pb.ModelInferResponse(),
                    state.spec,
                    decoded,
                    answer.outputs,
                    answer.parameters(),
                )
        except LabError as exc:
            self.server.record(state, received, None, exc)
            await self._abort(context, exc)
        except BaseException as exc:  # a bug, or the client cancelled the call
            self.server.record(state, received, None, exc)
            if isinstance(exc, Exception):
                log.exception("unhandled error in ModelInfer")
            raise  # grpc answers UNKNOWN with the message; the server keeps serving
        self.server.record(state, received, answer)
        return response


def build_server(
    server: ModelServer, host: str, port: int, max_message_bytes: int, token: str | None
) -> tuple[Any, int]:
    """A grpc.aio server (not started) and the port it bound (port 0 picks a free one)."""
    aio_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(server, token), aio_server)
    try:
        bound = aio_server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise ConfigError(f"cannot bind gRPC to {host}:{port} (address in use?)")
    return aio_server, bound
