"""A server across a process boundary as a harness target (`servelab bench --target URL`).

`http://HOST:PORT` speaks KServe v2 REST with Triton's binary tensor extension (aiohttp);
`grpc://HOST:PORT` speaks inference.GRPCInferenceService with raw contents (grpc.aio). Both
run on one asyncio loop in a background thread, so `submit` returns at once; at most
`concurrency` requests are on the wire, the rest wait client-side (and that wait counts,
since the harness measures from the scheduled time).

Completions carry the server's own queue/compute split (from the response parameters
servelab_queue_ns / servelab_compute_ns) with `end_ns` the local receive time; from a server
that does not send them both are 0. A failed request fails its future with the LabError the
server's answer stands for (InputError, Overloaded, QueueTimeout, ServeError).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from lab.batcher import Completion, Tensors, batch_size_of
from lab.bench.target import Target
from lab.errors import ConfigError, ServeError
from lab.protocol import client, codec
from lab.repository import ModelHandle


class RemoteTarget(Target):
    name = "remote"

    def __init__(
        self,
        url: str,
        handle: ModelHandle,
        concurrency: int = 64,
        timeout_s: float = 30.0,
        token: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigError("remote concurrency must be at least 1")
        self.url = url
        self.endpoint = client.parse_url(url)
        self.handle = handle
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self._token = token
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: Any = None
        self._channel: Any = None
        self._stub: Any = None
        self._pb: Any = None
        self._semaphore: asyncio.Semaphore | None = None
        self._headers: dict[str, str] = {}
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._server_meta: dict[str, Any] = {}
        self._model_meta: dict[str, Any] = {}
        self._output_names = [s.name for s in handle.outputs]

    # ----- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="remote-target", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop
        try:
            self._call(self._open())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            loop.close()

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout_s + 5)

    async def _open(self) -> None:
        token = client.auth_token(self._token)
        self._semaphore = asyncio.Semaphore(self.concurrency)
        if self.endpoint.protocol == "http":
            import aiohttp

            if token:
                self._headers = {"Authorization": f"Bearer {token}"}
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
            self._server_meta = await self._get_json("/v2")
            self._model_meta = await self._get_json(f"/v2/models/{self.handle.name}")
        else:
            import grpc

            from lab.protocol._proto import inference_pb2, inference_pb2_grpc

            if token:
                self._metadata = (("authorization", f"Bearer {token}"),)
            self._pb = inference_pb2
            self._channel = grpc.aio.insecure_channel(
                self.endpoint.address,
                options=[("grpc.max_receive_message_length", -1)],
            )
            self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)
            server = await self._grpc(self._stub.ServerMetadata, self._pb.ServerMetadataRequest())
            self._server_meta = {
                "name": server.name,
                "version": server.version,
                "extensions": list(server.extensions),
            }
            model = await self._grpc(
                self._stub.ModelMetadata, self._pb.ModelMetadataRequest(name=self.handle.name)
            )
            self._model_meta = {
                "name": model.name,
                "platform": model.platform,
                "inputs": [{"name": t.name, "datatype": t.datatype} for t in model.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype} for t in model.outputs],
                "parameters": {k: codec.parameter_value(v) for k, v in model.parameters.items()},
            }
        client.check_metadata(self.handle, self._model_meta, self.url)

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # ----- requests --------------------------------------------------------------------
    async def _get_json(self, path: str) -> dict[str, Any]:
        import aiohttp

        try:
            async with self._session.get(self.url + path, headers=self._headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise client.error_for_http(
                        response.status, codec.error_message(body), self.url
                    )
                value = json.loads(body)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise ServeError(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
        if not isinstance(value, dict):
            raise ServeError(f"{self.url}{path} did not answer with a JSON object")
        return value

    async def _grpc(self, method: Any, request: Any) -> Any:
        import grpc

        try:
            return await method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise client.error_for_grpc(exc.code().name, str(exc.details()), self.url) from None

    async def _infer_http(self, inputs: Tensors) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        import aiohttp

        body, header_length = codec.encode_http_request(inputs, self._output_names)
        headers = {
            **self._headers,
            codec.HEADER_LENGTH: str(header_length),
            "Content-Type": "application/octet-stream",
        }
        url = f"{self.url}/v2/models/{self.handle.name}/infer"
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
                if response.status != 200:
                    raise client.error_for_http(
                        response.status, codec.error_message(payload), self.url
                    )
                return codec.decode_http_response(
                    payload, response.headers.get(codec.HEADER_LENGTH)
                )
        except asyncio.TimeoutError:
            raise ServeError(f"{self.url} gave no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise ServeError(f"request to {self.url} failed: {type(exc).__name__}: {exc}") from None

    async def _infer(self, inputs: Tensors) -> Completion:
        assert self._semaphore is not None
        async with self._semaphore:
            if self.endpoint.protocol == "http":
                outputs, params = await self._infer_http(inputs)
            else:
                request = client.grpc_request(self._pb, self.handle.name, inputs)
                response = await self._grpc(self._stub.ModelInfer, request)
                outputs, params = client.grpc_outputs(response)
        end = time.perf_counter_ns()
        compute_ns = int(params.get("servelab_compute_ns", 0))
        queue_ns = int(params.get("servelab_queue_ns", 0))
        batch = int(params.get("servelab_batch_size", 0)) or batch_size_of(inputs)
        start = end - compute_ns
        return Completion(outputs, batch, start - queue_ns, start, end)

    def submit(self, inputs: Tensors, scheduled_ns: int) -> Future[Completion]:
        loop = self._loop
        if loop is None:
            raise ServeError("the remote target is not started")
        return asyncio.run_coroutine_threadsafe(self._infer(inputs), loop)

    def infer(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """One blocking request (for checks and tests)."""
        return self.submit(inputs, time.perf_counter_ns()).result(self.timeout_s + 5).outputs

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "protocol": self.endpoint.protocol,
            "concurrency": self.concurrency,
            "timeout_s": self.timeout_s,
            "server": self._server_meta,
            "model": {
                "name": self._model_meta.get("name", self.handle.name),
                "platform": self._model_meta.get("platform"),
                "parameters": self._model_meta.get("parameters", {}),
            },
        }
