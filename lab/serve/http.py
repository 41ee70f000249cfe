"""REST: the Open Inference Protocol (KServe v2) with Triton's extensions, on aiohttp.

Every error is `{"error": "..."}` with a status from lab.serve.errors (400 bad input, 401,
404 unknown model or route, 413, 503 overloaded or shutting down, 504 queue timeout; 500 only
when the model itself fails). Health endpoints never need the bearer token.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lab.errors import InputError, LabError
from lab.protocol import codec
from lab.serve.core import ModelServer, ModelState
from lab.serve.errors import PayloadTooLarge, Unauthorized, http_status
from lab.serve.metrics import CONTENT_TYPE, CpuGauges, GpuGauges, render

log = logging.getLogger("lab.serve")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OpenConnections:
    """The HTTP server's open connections, once `track_connections` has named the server."""

    def __init__(self) -> None:
        self.server: web.Server | None = None

    def lone(self) -> bool:
        return self.server is not None and len(self.server.connections) == 1


_SERVER = web.AppKey("server", ModelServer)
_LIMIT = web.AppKey("max_body_bytes", int)
_CONNECTIONS = web.AppKey("connections", OpenConnections)


def track_connections(app: web.Application, server: web.Server) -> None:
    """Let `infer` see how many connections `server` (the app's, after setup) holds open."""
    app[_CONNECTIONS].server = server


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(value, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def error_response(status: int, message: str) -> web.Response:
    response = _json({"error": message}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _auth_middleware(token: str | None) -> Any:
    expected = f"Bearer {token}".encode() if token else b""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and not request.path.startswith("/v2/health/"):
            got = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(got, expected):
                raise Unauthorized("missing or wrong bearer token (Authorization: Bearer ...)")
        return await handler(request)

    return middleware


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except LabError as exc:
        return error_response(http_status(exc), str(exc))
    except web.HTTPException as exc:  # unknown route, wrong method, aiohttp's own limits
        if exc.status < 400:
            raise
        message = exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        return error_response(exc.status, message)
    except Exception as exc:  # a bug: keep serving, log the traceback, answer 500
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, f"internal server error: {type(exc).__name__}: {exc}")


def _model(request: web.Request) -> ModelState:
    info = request.match_info
    return request.app[_SERVER].model(info["model"], info.get("version"))


async def live(request: web.Request) -> web.Response:
    server = request.app[_SERVER]
    return _json({"live": server.live}, 200 if server.live else 503)


async def ready(request: web.Request) -> web.Response:
    server = request.app[_SERVER]
    return _json({"ready": server.ready}, 200 if server.ready else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return _json(request.app[_SERVER].metadata())


async def model_metadata(request: web.Request) -> web.Response:
    return _json(_model(request).metadata())


async def model_ready(request: web.Request) -> web.Response:
    state = _model(request)
    ok = state.ready and not request.app[_SERVER].draining
    return _json({"name": state.name, "ready": ok}, 200 if ok else 503)


async def model_config(request: web.Request) -> web.Response:
    return _json(_model(request).model_config())


async def all_stats(request: web.Request) -> web.Response:
    server = request.app[_SERVER]
    return _json({"model_stats": [m.statistics() for m in server.models.values()]})


async def model_stats(request: web.Request) -> web.Response:
    return _json({"model_stats": [_model(request).statistics()]})


async def repository_index(request: web.Request) -> web.Response:
    ready_only = False
    if request.can_read_body:
        body = await request.read()
        if body.strip():
            try:
                ready_only = bool(json.loads(body).get("ready", False))
            except (ValueError, AttributeError):
                raise InputError("the repository index body must be a JSON object") from None
    return _json(request.app[_SERVER].repository_index(ready_only))


def _check_body_size(size: int, limit: int) -> None:
    if limit and size > limit:
        raise PayloadTooLarge(f"request body of {size} bytes is over the limit of {limit} bytes")


async def infer(request: web.Request) -> web.Response:
    received = time.perf_counter_ns()
    server = request.app[_SERVER]
    state = _model(request)
    answer = None
    error: BaseException | None = None
    try:
        with server.accepting():
            limit = request.app[_LIMIT]
            if request.content_length is not None:
                _check_body_size(request.content_length, limit)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:  # a chunked body that ran over the limit
                body = b""
                _check_body_size(limit + 1, limit)
            _check_body_size(len(body), limit)
            header = codec.parse_header_length(request.headers.get(codec.HEADER_LENGTH), len(body))
            decoded = codec.decode_http(state.spec, body, header)
            lone = request.app[_CONNECTIONS].lone()
            answer = await server.infer(state, decoded, lone_connection=lone)
            payload, json_size = codec.encode_http(
                state.spec, decoded, answer.outputs, answer.parameters()
            )
    except BaseException as exc:  # noted for the failure's reason label, then re-raised
        error = exc
        answer = None
        raise
    finally:
        server.record(state, received, answer, error)
    if json_size is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(
        body=payload,
        content_type="application/octet-stream",
        headers={codec.HEADER_LENGTH: str(json_size)},
    )


def build_app(server: ModelServer, max_body_bytes: int, token: str | None) -> web.Application:
    app = web.Application(
        middlewares=[_error_middleware, *([_auth_middleware(token)] if token else [])],
        client_max_size=max_body_bytes,
    )
    app[_SERVER] = server
    app[_LIMIT] = max_body_bytes
    app[_CONNECTIONS] = OpenConnections()
    routes = [
        web.get("/v2/health/live", live),
        web.get("/v2/health/ready", ready),
        web.get("/v2", server_metadata),
        web.get("/v2/models/stats", all_stats),
        web.post("/v2/repository/index", repository_index),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            web.get(prefix, model_metadata),
            web.get(prefix + "/ready", model_ready),
            web.get(prefix + "/config", model_config),
            web.get(prefix + "/stats", model_stats),
            web.post(prefix + "/infer", infer),
        ]
    app.add_routes(routes)
    return app


def build_metrics_app(server: ModelServer, token: str | None) -> web.Application:
    gpu = GpuGauges()
    cpu = CpuGauges()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=render(server, gpu, cpu).encode(), headers={"Content-Type": CONTENT_TYPE}
        )

    app = web.Application(
        middlewares=[_error_middleware, *([_auth_middleware(token)] if token else [])]
    )
    app.add_routes([web.get("/metrics", metrics)])
    return app
