"""Roofline counting on known graphs, ceilings, telemetry and the environment fingerprint."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lab.bench.environment import fingerprint, git_state
from lab.bench.roofline import attainment, count_graph, measure_ceilings, node_flops
from lab.bench.telemetry import NO_GPU, Telemetry, gpu_inventory


def _tiny_mlp(path: Path) -> Path:
    """x (B, 3) @ W (3, 4) + b (4,) -> relu -> Gemm(transA) with V (2, 4)^T ... -> y."""
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    table = numpy_helper.from_array(np.ones((1000, 3), np.float32), "table")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),  # (B, 3)
            helper.make_node("Add", ["x", "rows"], ["xr"]),  # (B, 3)
            helper.make_node("MatMul", ["xr", "W"], ["h"]),  # (B, 4)
            helper.make_node("Add", ["h", "b"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["y"]),
        ],
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["B"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        [w, b, table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_flops_and_bytes_of_a_known_graph(tmp_path: Path) -> None:
    path = _tiny_mlp(tmp_path / "tiny.onnx")
    batch = {"x": np.ones((2, 3), np.float32), "ids": np.array([1, 7], np.int64)}
    (count,) = count_graph(path, [batch])
    # Add 2*3 + MatMul 2*2*4*3 + Add 2*4 + Relu 2*4; Gather is data movement.
    assert count["flops"] == 6 + 48 + 8 + 8
    assert count["flops_by_op"] == {"MatMul": 48, "Add": 14, "Relu": 8}
    # Weights read whole: W and b; the 1000-row table is only gathered from (2 rows read).
    assert count["weight_bytes"] == 3 * 4 * 4 + 4 * 4
    # Activations: Gather writes rows(24); Add reads x(24)+rows(24), writes xr(24); MatMul
    # reads xr(24), writes h(32); Add reads h(32), writes hb(32); Relu reads hb(32), writes y(32);
    # Gather also reads ids(16).
    assert count["activation_bytes"] == 16 + 24 + 24 + 24 + 24 + 24 + 32 + 32 + 32 + 32 + 32


def test_node_flop_rules() -> None:
    assert node_flops("MatMul", [(8, 16, 32), (32, 64)], [(8, 16, 64)]) == 2 * 8 * 16 * 64 * 32
    assert node_flops("Gemm", [(5, 7), (7, 3), (3,)], [(5, 3)]) == 2 * 5 * 3 * 7 + 15
    assert node_flops("Gemm", [(7, 5), (7, 3)], [(5, 3)], {"transA": 1}) == 2 * 5 * 3 * 7
    assert node_flops("Conv", [(1, 4, 8, 8), (6, 2, 3, 3)], [(1, 6, 6, 6)]) == 2 * 216 * 18
    assert node_flops("Softmax", [(2, 10)], [(2, 10)]) == 100
    assert node_flops("Reshape", [(2, 10), (2,)], [(20,)]) == 0


def test_encoder_work_per_sample_grows_with_sequence_length(encoder_small) -> None:  # type: ignore[no-untyped-def]
    short = {"input_ids": np.ones((1, 16), np.int64), "attention_mask": np.ones((1, 16), np.int64)}
    long = {"input_ids": np.ones((1, 64), np.int64), "attention_mask": np.ones((1, 64), np.int64)}
    a, b = count_graph(encoder_small.onnx_path, [short, long])
    cfg = encoder_small.size_config
    # Linear layers alone: 2 * tokens * (4 C^2 + 2 C F) per layer.
    linear = 2 * 16 * (4 * cfg.hidden**2 + 2 * cfg.hidden * cfg.ffn) * cfg.layers
    assert linear <= a["flops_by_op"]["MatMul"] + a["flops_by_op"].get("Gemm", 0) < 1.3 * linear
    assert 4 <= b["flops"] / a["flops"] < 5  # linear in length, plus quadratic attention
    assert a["weight_bytes"] == b["weight_bytes"]


def test_ceilings_and_attainment() -> None:
    ceilings = measure_ceilings("numpy", budget_s=0.05, matmul_n=256, copy_bytes=8 << 20)
    assert ceilings["peak_flops_per_s"] > 1e8 and ceilings["peak_bytes_per_s"] > 1e8
    work = {"flops_per_sample": 1e6, "weight_bytes": 2e6, "activation_bytes_per_sample": 0.0}
    fixed = {"peak_flops_per_s": 1e9, "peak_bytes_per_s": 1e9}
    at_1 = attainment(work, fixed, samples_per_s=100.0, batch_size=1)
    assert at_1["arithmetic_intensity"] == 0.5 and at_1["bound"] == "memory"
    assert at_1["achieved_flops_per_s"] == 1e8 and at_1["fraction_of_roofline"] == 0.2
    at_64 = attainment(work, fixed, samples_per_s=100.0, batch_size=64)
    assert at_64["bound"] == "compute" and at_64["fraction_of_peak_flops"] == 0.1


def test_ort_ceiling_runs_through_onnxruntime() -> None:
    ceilings = measure_ceilings("onnxruntime", budget_s=0.05, matmul_n=256, copy_bytes=8 << 20)
    assert ceilings["framework"] == "onnxruntime (cpu)" and ceilings["peak_flops_per_s"] > 1e8


def test_telemetry_samples_the_process_and_says_no_gpu() -> None:
    with Telemetry(interval_s=0.02) as telemetry:
        # Busy until three samples are in (however slowly a loaded machine schedules the
        # sampling thread), with a generous bound so a broken sampler still fails.
        deadline = time.monotonic() + 60
        while len(telemetry.cpu_percent) < 3 and time.monotonic() < deadline:
            sum(range(1000))
    summary = telemetry.summary()
    assert summary["samples"] >= 3
    assert summary["process_cpu_percent_max"] > 0
    assert summary["process_rss_bytes_max"] > 10 << 20
    assert summary["gpu"] == NO_GPU and "gpu_metrics" not in summary


def test_telemetry_counts_child_processes_as_the_runs_own() -> None:
    """A runner worker is a child process: its CPU is the run's, not another process's."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with Telemetry(interval_s=0.02) as telemetry:
            assert child.pid in telemetry._children
    finally:
        child.kill()
        child.wait()
    assert telemetry.summary()["samples"] >= 1


class _FakeNVML(types.ModuleType):
    """Just enough of pynvml to drive the GPU code paths without a GPU."""

    class NVMLError(Exception):
        pass

    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

    def __init__(self, fail: bool = False) -> None:
        super().__init__("pynvml")
        self.fail = fail

    def nvmlInit(self) -> None:
        if self.fail:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"Fake GPU"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "999.1"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(total=80 << 30, used=1 << 30)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(gpu=42)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 123_000

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        return 1500 if kind == 1 else 2600


def test_gpu_telemetry_paths_with_a_stand_in_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNVML())
    assert gpu_inventory() == {
        "gpu": [{"index": 0, "name": "Fake GPU", "memory_total_bytes": 80 << 30}],
        "driver": "999.1",
    }
    with Telemetry(interval_s=0.02) as telemetry:
        time.sleep(0.1)
    summary = telemetry.summary()
    assert summary["gpu"] == "Fake GPU"
    assert summary["gpu_metrics"]["utilization_percent"]["max"] == 42
    assert summary["gpu_metrics"]["power_w"]["mean"] == 123.0
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNVML(fail=True))
    assert gpu_inventory() == {"gpu": NO_GPU}


def test_environment_fingerprint(repo_root: Path) -> None:
    env = fingerprint(repo_root)
    assert env["cpu"]["logical_cores"] >= 1 and env["cpu"]["model"]
    assert env["libraries"]["onnxruntime"] and env["libraries"]["servelab"]
    state = git_state(repo_root)
    assert state["commit"] is None or len(state["commit"]) == 40
    assert git_state(Path("/")) == {"commit": None, "dirty": None}


def test_work_model_predicts_exact_counts_for_new_lengths(encoder_small) -> None:  # type: ignore[no-untyped-def]
    from lab.bench.roofline import dynamic_size, work_for, work_model
    from lab.workload import Workload

    workload = Workload(encoder_small)
    model = work_model(encoder_small.onnx_path, workload.samples(64, "fit"), encoder_small.inputs)
    assert len(model["flops_fit"]) == 3 and model["samples_counted"] >= 3
    fresh = workload.samples(4, "unseen")
    exact = count_graph(encoder_small.onnx_path, fresh)
    for sample, count in zip(fresh, exact):
        predicted = work_for(model, [sample], encoder_small.inputs)
        assert predicted["flops_per_sample"] == pytest.approx(count["flops"], rel=1e-6)
        size = dynamic_size(sample, encoder_small.inputs)
        assert size == sample["input_ids"].shape[1]
