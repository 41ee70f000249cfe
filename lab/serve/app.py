"""Start REST, gRPC and metrics on one asyncio loop; drain and stop on SIGTERM.

Shutdown (SIGTERM or SIGINT): the server reports not-ready, answers new infer requests with
503 / UNAVAILABLE, waits up to `grace_s` for every accepted request to be answered, then
closes its listeners and runners. Exit 0 when everything in flight was answered, 1 when the
grace period ran out first.

`BackgroundServer` runs the same server in a thread with its own loop (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from typing import Any

from aiohttp import web

from lab.errors import ConfigError
from lab.serve.config import ServeConfig
from lab.serve.core import ModelServer
from lab.serve.grpc_service import build_server
from lab.serve.http import build_app, build_metrics_app, track_connections


class Server:
    """One server: the model core plus its three listeners."""

    def __init__(self, config: ServeConfig, core: ModelServer | None = None) -> None:
        self.config = config
        self.core = core
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []
        self._grpc: Any = None

    async def _site(self, app: web.Application, port: int, what: str) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.config.grace_s)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.config.host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot bind {what} to {self.config.host}:{port}: {exc.strerror}"
            ) from None
        return int(runner.addresses[-1][1])

    async def start(self) -> dict[str, int]:
        config = self.config
        token = config.auth_token()
        if self.core is None:
            self.core = ModelServer.from_config(config)
        core = self.core.start()
        try:
            http_app = build_app(core, config.max_body_bytes, token)
            self.ports["http"] = await self._site(http_app, config.http_port, "HTTP")
            server = self._runners[-1].server
            if server is not None:
                track_connections(http_app, server)
            self._grpc, self.ports["grpc"] = build_server(
                core, config.host, config.grpc_port, config.max_body_bytes, token
            )
            await self._grpc.start()
            metrics_app = build_metrics_app(core, token)
            self.ports["metrics"] = await self._site(metrics_app, config.metrics_port, "metrics")
        except BaseException:
            await self._close_listeners(0.0)
            core.close()
            raise
        return self.ports

    def banner(self) -> str:
        assert self.core is not None
        names = ",".join(self.core.models)
        host = self.config.host
        return (
            f"serving {names} on http={host}:{self.ports['http']} "
            f"grpc={host}:{self.ports['grpc']} metrics={host}:{self.ports['metrics']}"
        )

    async def _close_listeners(self, grace_s: float) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace_s)
            self._grpc = None
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []

    async def shutdown(self) -> bool:
        """Drain and stop. True when every accepted request was answered."""
        assert self.core is not None
        core = self.core
        deadline = time.monotonic() + self.config.grace_s
        core.begin_drain()
        drained = await core.wait_idle(self.config.grace_s)
        await self._close_listeners(max(0.0, deadline - time.monotonic()))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, core.close, max(0.1, deadline - time.monotonic()))
        return drained


async def serve(config: ServeConfig) -> int:
    server = Server(config)
    await server.start()
    print(server.banner(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("draining: not ready, finishing requests in flight", file=sys.stderr, flush=True)
    drained = await server.shutdown()
    if not drained:
        print(
            f"servelab: grace period of {config.grace_s:g} s ran out with requests in flight",
            file=sys.stderr,
            flush=True,
        )
        return 1
    print("stopped cleanly", file=sys.stderr, flush=True)
    return 0


def run(config: ServeConfig) -> int:
    return asyncio.run(serve(config))


class BackgroundServer:
    """The server in a daemon thread with its own loop; `start()` returns once it listens."""

    def __init__(self, config: ServeConfig, core: ModelServer | None = None) -> None:
        self.server = Server(config, core)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.drained: bool | None = None

    @property
    def core(self) -> ModelServer:
        assert self.server.core is not None
        return self.server.core

    @property
    def ports(self) -> dict[str, int]:
        return self.server.ports

    @property
    def http_url(self) -> str:
        return f"http://{self.server.config.host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.server.config.host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.server.config.host}:{self.ports['metrics']}/metrics"

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        self.drained = await self.server.shutdown()

    def start(self, timeout_s: float = 120.0) -> BackgroundServer:
        def target() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=target, name="servelab-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError("server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float = 60.0) -> bool | None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            if self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout_s)
        return self.drained

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
