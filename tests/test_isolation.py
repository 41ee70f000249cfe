"""The runner worker: a runner under test runs in its own process, behind shared memory.

Real worker processes, real ONNX Runtime; the plugins here are small files written to
tmp_path so each test shows exactly what the worker faces.
"""

from __future__ import annotations

import os
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lab.errors import ConfigError, PluginError, RunnerError, WorkerLost
from lab.isolation import isolation_of, make_runner, wire
from lab.isolation.runner import MAX_PARENT_SPIN_S, AnswerTime, IsolatedRunner
from lab.repository import ModelHandle
from lab.runners.onnxruntime import OnnxRuntimeRunner
from lab.workload import SECRET_SEED_ENV, Workload

HONEST = """
import os, signal, sys, threading
import numpy as np
import onnxruntime as ort
from lab.runners.base import Runner

class Plugin(Runner):
    name = "test-plugin"

    def __init__(self, mode="honest", after=0, **options):
        super().__init__(mode=mode, after=after, **options)
        self.calls = 0

    def load_impl(self, model):
        if self.options["mode"] == "hang-load":
            threading.Event().wait()
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(model.onnx_path), so)
        self.names = [o.name for o in model.outputs]

    def infer_impl(self, inputs):
        self.calls += 1
        mode = self.options["mode"]
        if self.calls > self.options["after"]:
            if mode == "segfault":
                os.kill(os.getpid(), signal.SIGSEGV)
            if mode == "hang":
                threading.Event().wait()
            if mode == "raise":
                raise ValueError("bad day")
            if mode == "exit":
                os._exit(3)
        outputs = dict(zip(self.names, self.session.run(self.names, inputs)))
        if mode == "big":
            batch = next(iter(inputs.values())).shape[0]
            outputs["embedding"] = np.arange(batch * 300_000, dtype=np.float32).reshape(batch, -1)
        return outputs

    def describe(self):
        return {
            **super().describe(),
            "pid": os.getpid(),
            "secret_in_env": any("SECRET" in k for k in os.environ),
            "harness_modules": sorted(m for m in sys.modules if m.startswith("lab.bench")
                                      or m == "lab.check"),
        }
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("plugins") / "plugin.py"
    path.write_text(HONEST)
    return f"{path}:Plugin"


@pytest.fixture(scope="module")
def batches(encoder_small: ModelHandle) -> list[dict[str, np.ndarray]]:
    workload = Workload(encoder_small, seed=11)
    samples = workload.samples(9, "isolation")
    return [workload.collate(samples[:1]), workload.collate(samples[1:9])]


def _write(tmp_path: Path, source: str) -> str:
    path = tmp_path / "rule.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_isolated_outputs_equal_in_process_outputs(
    encoder_small: ModelHandle, batches: list[dict[str, np.ndarray]]
) -> None:
    options = {"intra_op_threads": 1}
    with (
        make_runner("onnxruntime", options) as isolated,
        OnnxRuntimeRunner(**options) as local,
    ):
        isolated.load(encoder_small)
        local.load(encoder_small)
        assert isolation_of(isolated) == "process" and isolation_of(local) == "none"
        for batch in batches:
            got, want = isolated.infer(batch), local.infer(batch)
            for name in want:
                np.testing.assert_array_equal(got[name], want[name])


def test_worker_is_another_process_without_secret_or_harness(
    plugin: str, encoder_small: ModelHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_SEED_ENV, "424242")
    import lab.bench.harness  # noqa: F401  (the parent has the harness loaded)

    with make_runner(plugin) as runner:
        runner.load(encoder_small)
        assert isinstance(runner, IsolatedRunner)
        seen = runner.describe()["reported_by_worker"]
        assert seen["pid"] != os.getpid()
        assert seen["pid"] == runner.usage()["pid"]
        assert seen["secret_in_env"] is False
        assert seen["harness_modules"] == []


def test_a_runner_exception_is_one_error_and_the_worker_keeps_serving(
    plugin: str, encoder_small: ModelHandle, batches: list[dict[str, np.ndarray]]
) -> None:
    with make_runner(plugin, {"mode": "raise", "after": 1}) as runner:
        runner.load(encoder_small)
        runner.infer(batches[0])
        with pytest.raises(RunnerError, match="ValueError: bad day") as caught:
            runner.infer(batches[0])
        assert not isinstance(caught.value, WorkerLost)
        assert runner.usage()["lost"] is None


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("segfault", "killed by signal SIGSEGV"), ("exit", "exited with code 3")],
)
def test_a_dying_worker_is_reported_with_how_it_died(
    plugin: str,
    encoder_small: ModelHandle,
    batches: list[dict[str, np.ndarray]],
    mode: str,
    expected: str,
) -> None:
    runner = make_runner(plugin, {"mode": mode, "after": 2}).load(encoder_small)
    try:
        runner.infer(batches[0])
        runner.infer(batches[1])
        with pytest.raises(WorkerLost, match=f"runner worker died: {expected}") as caught:
            runner.infer(batches[1])
        assert "batch of 8" in str(caught.value)
        with pytest.raises(WorkerLost):  # and every later call fails at once
            runner.infer(batches[0])
        assert isinstance(runner, IsolatedRunner)
        assert runner.usage()["exit"] == expected
    finally:
        runner.close()


def test_a_hung_worker_is_killed_after_the_timeout(
    plugin: str, encoder_small: ModelHandle, batches: list[dict[str, np.ndarray]]
) -> None:
    runner = make_runner(plugin, {"mode": "hang", "after": 1}, infer_timeout_s=1.0)
    runner.load(encoder_small)
    try:
        runner.infer(batches[0])
        with pytest.raises(WorkerLost, match=r"runner worker hung: no answer within 1 s"):
            runner.infer(batches[0])
        assert isinstance(runner, IsolatedRunner) and runner.process is not None
        assert runner.process.poll() is not None  # killed
    finally:
        runner.close()


def test_a_load_that_never_ends_is_bounded(plugin: str, encoder_small: ModelHandle) -> None:
    runner = make_runner(plugin, {"mode": "hang-load"}, load_timeout_s=1.0)
    with pytest.raises(WorkerLost, match="no answer within 1 s while loading encoder"):
        runner.load(encoder_small)
    assert not runner.is_loaded


def test_outputs_larger_than_the_arena_grow_it(
    plugin: str, encoder_small: ModelHandle, batches: list[dict[str, np.ndarray]]
) -> None:
    with make_runner(plugin, {"mode": "big"}) as runner:
        runner.load(encoder_small)
        out = runner.infer(batches[1])  # 8 x 300,000 float32 = 9.6 MB > the 1 MiB arena
        np.testing.assert_array_equal(
            out["embedding"], np.arange(8 * 300_000, dtype=np.float32).reshape(8, -1)
        )


def test_a_forged_reply_cannot_reach_outside_the_arena(
    plugin: str, encoder_small: ModelHandle, batches: list[dict[str, np.ndarray]]
) -> None:
    with make_runner(plugin) as runner:
        runner.load(encoder_small)
        assert isinstance(runner, IsolatedRunner)
        runner.infer(batches[0])
        huge = wire.HEAD.pack(wire.OP_OK, 7, 0) + wire.HOOK_NS.pack(0)
        for _ in encoder_small.outputs:
            huge += wire.OUTPUT_HEAD.pack(10, 2) + struct.pack("<2q", 1 << 40, 1 << 20)
        with pytest.raises(RunnerError, match="does not fit"):
            runner._decode(huge, 7)
        with pytest.raises(RunnerError, match="unreadable"):
            runner._decode(b"\x00garbage", 7)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (
            """
            from lab.runners.base import Runner
            class Plugin(Runner):
                def infer(self, inputs):
                    return {}
            """,
            r"overrides infer\(\): implement infer_impl\(\) instead",
        ),
        (
            """
            from lab.runners.base import Runner
            class Plugin(Runner):
                def __init__(self, **options):
                    self.options = options
            """,
            r"does not call super\(\).__init__",
        ),
        ("raise ImportError('no such thing')\n", "failed to import: ImportError: no such thing"),
    ],
)
def test_plugin_rules_are_enforced_in_the_worker(
    tmp_path: Path, encoder_small: ModelHandle, source: str, match: str
) -> None:
    runner = make_runner(f"{_write(tmp_path, source)}:Plugin")
    with pytest.raises(PluginError, match=match):
        runner.load(encoder_small)


def test_unknown_runner_and_options_are_config_errors(encoder_small: ModelHandle) -> None:
    with pytest.raises(ConfigError, match="unknown runner 'nope'"):
        make_runner("nope")
    runner = make_runner("onnxruntime", {"no_such_option": 1})
    with pytest.raises(ConfigError, match="no_such_option"):
        runner.load(encoder_small)
    with pytest.raises(ConfigError, match="unknown isolation"):
        make_runner("onnxruntime", isolation="thread")


def test_the_parent_spins_through_a_window_that_follows_how_much_answers_vary() -> None:
    least_s = 0.0003
    steady = AnswerTime(0.002)
    for _ in range(60):
        steady.update(0.002)
    assert steady.mean_s == pytest.approx(0.002)
    assert steady.window_s(least_s) == least_s  # no variation: the least window
    jittery = AnswerTime(0.004)
    for i in range(60):
        jittery.update(0.004 + (0.0004 if i % 2 else -0.0004))
    window = jittery.window_s(least_s)
    assert least_s < window <= jittery.mean_s / 4  # wider, but at most a quarter of the mean
    wild = AnswerTime(0.1)
    for i in range(60):
        wild.update(0.1 + (0.05 if i % 2 else -0.05))
    assert wild.window_s(least_s) == MAX_PARENT_SPIN_S  # long, erratic batches: capped
