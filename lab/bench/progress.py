"""Progress while a benchmark runs: a rich progress bar on a terminal, plain lines otherwise.

Phases are timed, not counted: the load generator's issuing loop must not pay for progress
updates, so a phase declares how long it expects to take and the bar follows the clock.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


class Progress:
    """`with progress.phase("server 200 qps", expected_s=10): ...`"""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = enabled and self.stream.isatty()
        self._rich: Any = None

    def __enter__(self) -> Progress:
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def note(self, message: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.console.print(message)
        else:
            print(f"servelab bench: {message}", file=self.stream, flush=True)

    @contextmanager
    def phase(self, description: str, expected_s: float = 0.0) -> Iterator[None]:
        started = time.perf_counter()
        if self._rich is not None:
            task = self._rich.add_task(description, total=max(expected_s, 0.1), start=True)
            stop = _Ticker(self._rich, task, started)
            stop.start()
            try:
                yield
            finally:
                stop.stop()
                self._rich.update(task, completed=self._rich.tasks[task].total)
                self._rich.stop_task(task)
            return
        if self.enabled:
            print(f"servelab bench: {description} ...", file=self.stream, flush=True)
        yield
        if self.enabled:
            elapsed = time.perf_counter() - started
            print(
                f"servelab bench: {description} done in {elapsed:.1f} s",
                file=self.stream,
                flush=True,
            )


class _Ticker:
    """Moves a rich task along with the wall clock from a background thread."""

    def __init__(self, rich: Any, task: Any, started: float) -> None:
        import threading

        self._rich, self._task, self._started = rich, task, started
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(0.2):
            total = self._rich.tasks[self._task].total or 1.0
            elapsed = time.perf_counter() - self._started
            self._rich.update(self._task, completed=min(elapsed, total * 0.99))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
