"""Run `servelab serve` as a child process (tests, benchmarks, drills).

    with ServerProcess(["--model", "ranker"]) as server:
        server.http_url   # http://127.0.0.1:NNNN (ports are picked free)

The child gets `--http-port 0 --grpc-port 0 --metrics-port 0` unless the arguments name
ports; the banner line it prints at startup gives the ports chosen.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from lab.errors import ServeError

ROOT = Path(__file__).resolve().parent.parent.parent
BANNER = re.compile(r"^serving (\S+) on http=(\S+):(\d+) grpc=(\S+):(\d+) metrics=(\S+):(\d+)$")


class ServerProcess:
    def __init__(
        self,
        args: Sequence[str] = (),
        cwd: Path | str = ROOT,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.args = list(args)
        for flag in ("--http-port", "--grpc-port", "--metrics-port"):
            if flag not in self.args:
                self.args += [flag, "0"]
        self.cwd = Path(cwd)
        self.env = {**os.environ, **(env or {})}
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.host = "127.0.0.1"
        self.ports: dict[str, int] = {}
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "lab", "serve", *self.args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        found: list[re.Match[str]] = []

        def read_banner() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout_lines.append(line.rstrip("\n"))
                match = BANNER.match(line.strip())
                if match:
                    found.append(match)
                    break

        reader = threading.Thread(target=read_banner, daemon=True)
        reader.start()
        reader.join(self.start_timeout_s)
        if not found:
            self.kill()
            raise ServeError(
                "server did not start: " + " | ".join(self.stderr_lines[-5:] or self.stdout_lines)
            )
        match = found[0]
        self.host = match.group(2)
        self.ports = {
            "http": int(match.group(3)),
            "grpc": int(match.group(5)),
            "metrics": int(match.group(7)),
        }
        return self

    def _pump_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.terminate(30)
        except subprocess.TimeoutExpired:
            self.kill()
