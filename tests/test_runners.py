"""The runner contract: conformance of every built-in runner, validation, and plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lab.errors import BackendUnavailable, ConfigError, InputError, PluginError, RunnerError
from lab.repository import ModelHandle
from lab.runners import RUNNERS, create_runner, parse_options, resolve_runner
from lab.runners.base import Runner
from lab.workload import Workload

CPU_RUNNERS = ["onnxruntime", "torch"]


@pytest.fixture(params=["encoder_small", "ranker_small"])
def handle(request: pytest.FixtureRequest) -> ModelHandle:
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("runner_name", CPU_RUNNERS)
def test_every_cpu_runner_matches_the_reference_on_a_padded_batch(
    handle: ModelHandle, runner_name: str
) -> None:
    workload = Workload(handle)
    samples = workload.samples(6, stream="conformance")
    expected = workload.reference(samples)
    with create_runner(runner_name).load(handle) as runner:
        outputs = runner.infer(workload.collate(samples))
    assert sorted(outputs) == sorted(s.name for s in handle.outputs)
    for spec in handle.outputs:
        assert outputs[spec.name].dtype == np.float32
        assert outputs[spec.name].shape[0] == 6
    per_sample = [{k: v[i : i + 1] for k, v in outputs.items()} for i in range(6)]
    result = workload.checker().check(per_sample, expected)
    assert result.passed, result.summary()


def test_runner_validates_inputs_before_the_backend_sees_them(encoder_small: ModelHandle) -> None:
    ids = np.ones((2, 5), np.int64)
    with create_runner("onnxruntime").load(encoder_small) as runner:
        with pytest.raises(InputError, match="expected inputs"):
            runner.infer({"input_ids": ids})
        with pytest.raises(InputError, match="dtype int32, expected int64"):
            runner.infer({"input_ids": ids.astype(np.int32), "attention_mask": ids})
        with pytest.raises(InputError, match="rank"):
            runner.infer({"input_ids": ids[0], "attention_mask": ids})
        with pytest.raises(InputError, match=r"must match 'input_ids' \[2, 5\]"):
            runner.infer({"input_ids": ids, "attention_mask": np.ones((2, 4), np.int64)})
        with pytest.raises(InputError, match="batch size 3, others have 2"):
            runner.infer({"input_ids": ids, "attention_mask": np.ones((3, 5), np.int64)})
        too_big = np.ones((encoder_small.config.max_batch_size + 1, 4), np.int64)
        with pytest.raises(InputError, match="exceeds the model's max_batch_size"):
            runner.infer({"input_ids": too_big, "attention_mask": too_big})
        assert runner.infer({"input_ids": ids, "attention_mask": ids})["embedding"].shape[0] == 2


def test_fixed_dimensions_are_enforced(ranker_small: ModelHandle) -> None:
    bad = {"dense": np.zeros((1, 12), np.float32), "sparse": np.zeros((1, 26), np.int64)}
    with (
        create_runner("onnxruntime").load(ranker_small) as runner,
        pytest.raises(InputError, match=r"expected \[-1, 13\]"),
    ):
        runner.infer(bad)


def test_infer_before_load_is_a_clear_error() -> None:
    with pytest.raises(RunnerError, match="not loaded"):
        create_runner("onnxruntime").infer({})


class TupleRunner(Runner):
    """A backend that breaks the return contract (returns a tuple, like Polygraphy's PytRunner did)."""

    name = "tuple"

    def load_impl(self, model: ModelHandle) -> None:
        self.spec = model.outputs[0]

    def infer_impl(self, inputs):  # type: ignore[no-untyped-def]
        return (np.zeros((1, 1), np.float32),)


class ShortRunner(Runner):
    name = "short"

    def load_impl(self, model: ModelHandle) -> None:
        self.names = [s.name for s in model.outputs]

    def infer_impl(self, inputs):  # type: ignore[no-untyped-def]
        return {n: np.zeros((99, 1), np.float32) for n in self.names}


def test_base_runner_rejects_a_backend_that_breaks_the_return_contract(
    ranker_small: ModelHandle,
) -> None:
    batch = Workload(ranker_small).collate(Workload(ranker_small).samples(2))
    with (
        TupleRunner().load(ranker_small) as runner,
        pytest.raises(RunnerError, match="must return a dict"),
    ):
        runner.infer(batch)
    with ShortRunner().load(ranker_small) as runner, pytest.raises(RunnerError, match="batch of 2"):
        runner.infer(batch)


def test_unavailable_provider_names_the_install_hint(encoder_small: ModelHandle) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        create_runner("onnxruntime", {"provider": "cuda"}).load(encoder_small)


def test_tensorrt_runner_is_unavailable_without_a_gpu_and_says_why(
    encoder_small: ModelHandle,
) -> None:
    """CPU machines: the TensorRT path must fail with its install hint, not an ImportError.

    The TensorRT code path itself is UNVERIFIED until it runs on a GPU (see benchmarks/gpu_check.py).
    """
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="TensorRT"):
            create_runner("tensorrt").load(encoder_small)
    else:  # pragma: no cover - only on GPU machines
        pytest.skip("TensorRT is installed: covered by benchmarks/gpu_check.py")


def test_registry_lists_only_importable_runner_modules() -> None:
    for name in RUNNERS:
        assert issubclass(resolve_runner(name), Runner)


def test_unknown_runner_and_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown runner 'nope'"):
        resolve_runner("nope")
    with pytest.raises(ConfigError, match="key=value"):
        parse_options(["threads"])
    assert parse_options(["intra-op-threads=2", "fp16=true", "x=0.5", "p=cpu"]) == {
        "intra_op_threads": 2,
        "fp16": True,
        "x": 0.5,
        "p": "cpu",
    }
    with pytest.raises(ConfigError, match="has no option 'thredas': valid options: provider"):
        create_runner("onnxruntime", {"thredas": 2})
    with pytest.raises(ConfigError, match="unknown onnxruntime provider"):
        create_runner("onnxruntime", {"provider": "quantum"})._providers(__import__("onnxruntime"))


PLUGIN = textwrap.dedent(
    """
    import numpy as np
    from lab.runners.onnxruntime import OnnxRuntimeRunner
    from lab.runners.base import Runner

    class Doubler(OnnxRuntimeRunner):
        name = "doubler"

    class Broken(Runner):
        def load_impl(self, model):
            raise RuntimeError("GPU on fire")

    class NotARunner:
        pass
    """
)


def _write_plugin(tmp_path: Path) -> Path:
    path = tmp_path / "my_runner.py"
    path.write_text(PLUGIN)
    return path


def test_plugin_loads_from_a_file_path(tmp_path: Path, ranker_small: ModelHandle) -> None:
    path = _write_plugin(tmp_path)
    runner = create_runner(f"{path}:Doubler")
    assert runner.name == "doubler"
    with runner.load(ranker_small):
        batch = Workload(ranker_small).collate(Workload(ranker_small).samples(3))
        assert runner.infer(batch)["probability"].shape == (3, 1)


def test_plugin_loads_from_a_module_path() -> None:
    assert resolve_runner("lab.runners.onnxruntime:OnnxRuntimeRunner").name == "onnxruntime"


def test_broken_plugins_give_one_clear_error(tmp_path: Path) -> None:
    path = _write_plugin(tmp_path)
    with pytest.raises(PluginError, match="has no class 'Missing'"):
        resolve_runner(f"{path}:Missing")
    with pytest.raises(PluginError, match="not a subclass"):
        resolve_runner(f"{path}:NotARunner")
    with pytest.raises(PluginError, match="does not exist"):
        resolve_runner(f"{tmp_path}/absent.py:X")
    bad = tmp_path / "syntax.py"
    bad.write_text("def (:\n")
    with pytest.raises(PluginError, match="failed to import: SyntaxError"):
        resolve_runner(f"{bad}:X")
    with pytest.raises(PluginError, match="cannot import runner plugin module"):
        resolve_runner("no_such_package.mod:X")


def _servelab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_reports_a_plugin_whose_load_raises_in_one_line(
    tmp_path: Path, ranker_small: ModelHandle
) -> None:
    path = _write_plugin(tmp_path)
    proc = _servelab("verify", "--model", "ranker", "--runner", f"{path}:Broken")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "GPU on fire" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _servelab("verify", "--model", "ranker", "--runner", f"{path}:Missing")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"servelab: error: runner plugin {path} has no class 'Missing'"
