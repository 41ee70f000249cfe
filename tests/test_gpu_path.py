"""The GPU path: its pure logic on the CPU, and `@pytest.mark.gpu` tests that run only where
CUDA is present (benchmarks/gpu_check.py runs them on a GPU box).

No GPU has run any of this on the development machines. The NVML tests use a stand-in
module because NVML cannot exist without an NVIDIA driver; everything else is real
(ONNX Runtime sessions, torch, files and locks)."""

from __future__ import annotations

import json
import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lab.errors import BackendUnavailable, ConfigError, InputError, RunnerError
from lab.repository import ModelHandle
from lab.runners import create_runner
from lab.runners.engine_cache import EngineCache, atomic_write, make_key
from lab.runners.onnxruntime import (
    CPU,
    CUDA,
    TRT,
    check_providers,
    choose_provider,
    provider_options,
    tensorrt_provider_options,
)
from lab.runners.precision import math_mode
from lab.runners.shapes import (
    GraphCache,
    bucket,
    bucket_shape,
    buckets_up_to,
    check_in_profile,
    derive_profiles,
    ort_trt_profile_options,
)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


HAS_CUDA = _has_cuda()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="no CUDA GPU: torch.cuda.is_available() is False"
)


# ----- precision and tolerances -------------------------------------------------------------
def test_precision_selects_math_mode_and_rejects_unknown_ones() -> None:
    assert [math_mode(p) for p in ("fp32", "tf32", "fp16")] == ["fp32", "tf32", "fp16"]
    assert math_mode("fp32", "tf32") == "tf32"
    with pytest.raises(ConfigError, match="unknown math mode 'fp8'"):
        math_mode("fp32", "fp8")
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        math_mode("int4")


def test_tf32_has_its_own_tolerances_between_fp32_and_fp16(encoder_small: ModelHandle) -> None:
    from lab.check import Checker

    table = {p: Checker.for_model(encoder_small, p).tolerances["embedding"] for p in ("fp32", "tf32", "fp16")}  # fmt: skip
    assert table["fp32"].atol < table["tf32"].atol < table["fp16"].atol
    # A TF32-sized error (5e-4 relative) fails fp32 and passes tf32: the reason tf32 exists.
    expected = [{o: np.asarray(v) for o, v in s.items()} for s in _reference(encoder_small)]
    actual = [{o: v * np.float32(1 + 5e-4) for o, v in s.items()} for s in expected]
    assert not Checker.for_model(encoder_small, "fp32").check(actual, expected).passed
    assert Checker.for_model(encoder_small, "tf32").check(actual, expected).passed


def _reference(handle: ModelHandle) -> list[dict[str, np.ndarray]]:
    from lab.export import load_reference

    return list(load_reference(handle).outputs)[:8]


# ----- profiles and buckets -----------------------------------------------------------------
def test_profiles_cover_batch_and_dynamic_axes(encoder_small: ModelHandle) -> None:
    profiles = derive_profiles(encoder_small.inputs, 64, 8, 512)
    assert profiles["input_ids"].min == (1, 1)
    assert profiles["input_ids"].opt == (8, 128) and profiles["input_ids"].max == (64, 512)
    options = ort_trt_profile_options(profiles)
    assert options["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert options["trt_profile_max_shapes"] == "input_ids:64x512,attention_mask:64x512"
    with pytest.raises(
        InputError, match=r"shape \[65, 10\] is outside .*min \[1, 1\], max \[64, 512\]"
    ):
        check_in_profile("input_ids", (65, 10), profiles["input_ids"])
    check_in_profile("input_ids", (64, 512), profiles["input_ids"])


def test_ranker_profiles_keep_fixed_axes(ranker_small: ModelHandle) -> None:
    profiles = derive_profiles(ranker_small.inputs, 2048, 4096, 512)
    assert profiles["dense"].min == (1, 13) and profiles["dense"].max == (2048, 13)
    assert profiles["sparse"].opt == (2048, 26)  # opt_batch clamped to max_batch


def test_shapes_pad_up_to_a_small_set_of_buckets() -> None:
    assert buckets_up_to(64) == (1, 2, 4, 8, 16, 32, 64)
    assert buckets_up_to(100, smallest=16) == (16, 32, 64, 100)
    assert bucket(5, (1, 2, 4, 8)) == 8 and bucket(1, (1, 2)) == 1
    assert bucket_shape((3, 70), (-1, -1), (1, 2, 4), (16, 32, 64, 128)) == (4, 128)
    assert bucket_shape((3, 13), (-1, 13), (1, 2, 4), (16,)) == (4, 13)
    with pytest.raises(InputError, match="exceeds the largest CUDA-graph bucket 4"):
        bucket(5, (1, 2, 4))
    # every padded shape of a 64 x 512 model lands in one of at most 7 x 6 graphs
    keys = {bucket_shape((b, s), (-1, -1), buckets_up_to(64), buckets_up_to(512, 16))
            for b in range(1, 65) for s in range(1, 513)}  # fmt: skip
    assert len(keys) == 7 * 6


def test_graph_cache_is_a_capped_lru_that_releases_evicted_graphs() -> None:
    released: list[str] = []
    cache: GraphCache[int, str] = GraphCache(2, on_evict=released.append)
    cache.put(1, "a")
    cache.put(2, "b")
    assert cache.get(1) == "a"  # 1 is now the most recent
    cache.put(3, "c")
    assert cache.keys() == [1, 3] and released == ["b"] and cache.evictions == 1
    cache.clear()
    assert released == ["b", "a", "c"] and len(cache) == 0
    with pytest.raises(ConfigError, match="capacity must be >= 1"):
        GraphCache(0)


# ----- engine cache ---------------------------------------------------------------------------
def _key(encoder_small: ModelHandle, **changes: Any) -> Any:
    manifest = {"onnx_sha256": "a" * 64, "weights_sha256": "b" * 64}
    fields = dict(version="10.9.0", gpu="NVIDIA H200", cc=(9, 0), math="fp32", max_seq=512)
    fields.update(changes)
    profiles = derive_profiles(encoder_small.inputs, 64, 8, int(fields["max_seq"]))
    manifest.update(changes.get("manifest", {}))
    return make_key(manifest, str(fields["version"]), str(fields["gpu"]), fields["cc"],  # type: ignore[arg-type]
                    str(fields["math"]), profiles)  # fmt: skip


def test_engine_key_changes_with_everything_a_plan_depends_on(encoder_small: ModelHandle) -> None:
    base = _key(encoder_small).digest
    assert _key(encoder_small).digest == base  # deterministic
    variants = [
        _key(encoder_small, manifest={"onnx_sha256": "c" * 64}),
        _key(encoder_small, manifest={"weights_sha256": "d" * 64}),
        _key(encoder_small, version="10.10.0"),
        _key(encoder_small, gpu="NVIDIA H100 80GB HBM3"),
        _key(encoder_small, cc=(8, 0)),
        _key(encoder_small, math="tf32"),
        _key(encoder_small, max_seq=256),
    ]
    assert len({v.digest for v in variants} | {base}) == len(variants) + 1
    with pytest.raises(RunnerError, match="no weights_sha256: re-export"):
        make_key({"onnx_sha256": "a"}, "10", "gpu", (9, 0), "fp32", {})


def test_engine_cache_builds_once_under_a_lock_and_writes_a_manifest(
    tmp_path: Path, encoder_small: ModelHandle
) -> None:
    cache = EngineCache(tmp_path / "engines")
    key = _key(encoder_small)
    builds: list[bytes] = []
    gate = threading.Event()

    def build(timing: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
        builds.append(timing)
        gate.wait(timeout=10)  # the second worker arrives while this one builds
        return b"PLAN", b"TIMING", {"build_s": 1.5}

    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(cache.get_or_build(key, build)))
    first.start()
    while not builds:  # the first build is under way, holding the lock
        threading.Event().wait(0.01)
    second = threading.Thread(target=lambda: results.append(cache.get_or_build(key, build)))
    second.start()
    gate.set()
    first.join()
    second.join()
    assert len(builds) == 1 and builds[0] == b""  # no timing cache yet
    assert sorted(r.built for r in results) == [False, True]
    assert all(r.plan == b"PLAN" for r in results)
    manifest = json.loads(cache.manifest_path(key).read_text())
    assert manifest["build_s"] == 1.5 and manifest["math_mode"] == "fp32"
    assert manifest["gpu_name"] == "NVIDIA H200" and manifest["compute_capability"] == "9.0"
    assert cache.timing_cache_path(key).read_bytes() == b"TIMING"
    # a different key on the same GPU reuses the persisted timing cache
    other = _key(encoder_small, math="tf32")
    cache.get_or_build(other, build)
    assert builds[-1] == b"TIMING"
    assert not list((tmp_path / "engines").glob("*.tmp"))


def test_atomic_write_leaves_the_old_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.plan"
    atomic_write(target, b"old")

    def full(fd: int) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr("lab.runners.engine_cache.os.fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.plan"]


# ----- onnxruntime providers -----------------------------------------------------------------
def test_provider_assertion_catches_a_silent_cpu_fallback(encoder_small: ModelHandle) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(encoder_small.onnx_path), providers=[CPU])
    running = session.get_providers()  # a real session: what ran
    check_providers([CPU], running)
    with pytest.raises(
        BackendUnavailable, match="fell back from CUDAExecutionProvider to CPUExecutionProvider"
    ):
        check_providers([CUDA, CPU], running)
    with pytest.raises(BackendUnavailable, match="not in this build"):
        choose_provider("tensorrt", running)
    assert choose_provider("auto", [CPU]) == [CPU]
    assert choose_provider("tensorrt", [TRT, CUDA, CPU]) == [TRT, CUDA, CPU]


def test_provider_options_follow_the_math_mode(encoder_small: ModelHandle, tmp_path: Path) -> None:
    fp32 = provider_options([CUDA, CPU], "fp32", 1)
    assert fp32 == [(CUDA, {"device_id": "1", "use_tf32": "0"}), CPU]
    assert provider_options([CUDA, CPU], "tf32", 0)[0][1]["use_tf32"] == "1"
    trt = tensorrt_provider_options(encoder_small, 8, 512, tmp_path)
    options = provider_options([TRT, CUDA, CPU], "fp16", 0, trt, cuda_graph=True)
    name, trt_options = options[0]
    assert name == TRT and trt_options["trt_fp16_enable"] == "1"
    assert trt_options["trt_cuda_graph_enable"] == "1"
    assert trt_options["trt_engine_cache_path"] == str(tmp_path)
    assert trt_options["trt_profile_opt_shapes"] == "input_ids:8x128,attention_mask:8x128"
    assert "enable_cuda_graph" not in options[1][1]  # only the first provider captures


def test_cpu_runner_records_providers_and_math(encoder_small: ModelHandle) -> None:
    with create_runner("onnxruntime") as runner:
        runner.load(encoder_small)
        info = runner.describe()
    assert info["providers"] == [CPU] and info["providers_asked"] == [CPU]
    assert info["math_mode"] == "fp32"


# ----- torch options ---------------------------------------------------------------------------
def test_torch_runner_rejects_unknown_and_bad_options(ranker_small: ModelHandle) -> None:
    with pytest.raises(ConfigError, match="has no option 'dtyp'"):
        create_runner("torch", {"dtyp": "fp16"})
    with pytest.raises(ConfigError, match="unknown torch dtype 'fp8'"):
        create_runner("torch", {"dtype": "fp8"}).load(ranker_small)
    with pytest.raises(ConfigError, match="unknown torch compile mode 'fast'"):
        create_runner("torch", {"compile": "fast"}).load(ranker_small)
    with pytest.raises(ConfigError, match="cuda_graph needs device=cuda"):
        create_runner("torch", {"cuda_graph": True}).load(ranker_small)


def test_torch_runner_keeps_float_inputs_in_fp32(ranker_small: ModelHandle) -> None:
    """fp16 weights, fp32 counts: the ranker's log1p must see the fp32 input (a count of
    70000 is inf in fp16, and log1p(inf) would poison the batch)."""
    import torch

    seen: list[torch.dtype] = []
    original = torch.log1p

    def spy(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(x.dtype)
        return original(x, *args, **kwargs)

    from lab.workload import Workload

    batch = Workload(ranker_small).collate(Workload(ranker_small).samples(2, "fp32-inputs"))
    batch["dense"][:, 0] = 70000.0
    with create_runner("torch", {"dtype": "bf16"}) as runner:
        runner.load(ranker_small)
        torch.log1p = spy  # type: ignore[assignment]
        try:
            out = runner.infer(batch)
        finally:
            torch.log1p = original  # type: ignore[assignment]
        assert runner.describe()["math_mode"] == "bf16"
    assert seen and all(d == torch.float32 for d in seen)
    assert np.isfinite(out["probability"]).all()


# ----- every GPU runner fails on CPU with one line ------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present: the GPU tests below cover it")
@pytest.mark.parametrize(
    ("spec", "options", "needle"),
    [
        ("torch", {"device": "cuda"}, "torch sees no CUDA GPU"),
        ("tensorrt", {}, "TensorRT"),
        ("onnxruntime", {"provider": "cuda"}, "onnxruntime-gpu"),
        ("onnxruntime", {"provider": "tensorrt"}, "onnxruntime-gpu"),
    ],
)
def test_gpu_runners_fail_on_cpu_with_one_line(
    encoder_small: ModelHandle, spec: str, options: dict[str, Any], needle: str
) -> None:
    with pytest.raises(BackendUnavailable) as info:
        create_runner(spec, options).load(encoder_small)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present")
def test_cuda_buffers_say_what_is_missing() -> None:
    from lab.runners.cuda_buffers import open_buffers

    with pytest.raises(BackendUnavailable, match="torch sees no CUDA GPU") as info:
        open_buffers("auto", 0)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown buffers 'cupy'"):
        open_buffers("cupy", 0)


# ----- NVML (stand-in module: NVML cannot exist without an NVIDIA driver) -------------------
def test_cuda_index_maps_to_nvml_index_through_visible_devices_and_uuid() -> None:
    from lab.bench.telemetry import nvml_index

    devices = [{"index": i, "uuid": f"GPU-{i}aaa-{i}", "pci_bus_id": f"0000:{i:02x}:00.0"} for i in range(4)]  # fmt: skip
    assert nvml_index(0, None, devices) == 0
    assert nvml_index(0, "3,1", devices) == 3 and nvml_index(1, "3,1", devices) == 1
    assert nvml_index(0, "GPU-2aaa", devices) == 2  # a UUID prefix
    assert nvml_index(0, "3", devices, uuid="1aaa-1") == 1  # the runner's UUID wins
    with pytest.raises(IndexError, match="not among CUDA_VISIBLE_DEVICES=3"):
        nvml_index(1, "3", devices)


class _StandInNVML(types.ModuleType):
    """Just enough of pynvml; utilisation raises NotSupported as it does on a MIG slice."""

    class NVMLError(Exception):
        pass

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.energy_mj = 1_000_000.0

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        return f"Stand-in GPU {h}"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "999.1"

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return types.SimpleNamespace(total=80 << 30, used=1 << 30)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 300_000 if h == 1 else 1

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        return 1980

    def nvmlDeviceGetTemperature(self, h: int, kind: int) -> int:
        return 50

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: int) -> int:
        return 0x4 | 0x40

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self.energy_mj += 500.0
        return int(self.energy_mj)


def test_one_refused_nvml_metric_leaves_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.bench.telemetry import Telemetry

    monkeypatch.setitem(sys.modules, "pynvml", _StandInNVML())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    telemetry = Telemetry(interval_s=60).start()
    telemetry._sample()
    summary = telemetry.stop()
    assert summary["gpu"] == "Stand-in GPU 1" and summary["gpu_nvml_index"] == 1
    assert "utilization_percent" in summary["gpu_errors"]
    assert summary["gpu_metrics"]["power_w"]["max"] == 300.0
    assert summary["gpu_throttle_reasons"] == ["hw_thermal_slowdown", "sw_power_cap"]
    assert summary["gpu_energy_j"] == pytest.approx(0.5)  # two reads, 500 mJ apart


# ----- on a GPU ------------------------------------------------------------------------------
GPU_RUNNERS = [
    ("torch", {"device": "cuda"}),
    ("torch", {"device": "cuda", "cuda_graph": True}),
    ("onnxruntime", {"provider": "cuda"}),
    ("tensorrt", {}),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("spec", "options"), GPU_RUNNERS)
def test_gpu_runner_conformance(
    encoder_small: ModelHandle, spec: str, options: dict[str, Any]
) -> None:
    from lab.verify import verify_runner

    try:
        runner = create_runner(spec, options).load(encoder_small)
    except BackendUnavailable as exc:
        pytest.skip(f"skipped: {exc}")
    with runner:
        result = verify_runner(encoder_small, runner)
        assert result.passed, result.summary()
        assert runner.describe()["math_mode"] == "fp32"


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_buckets_bound_the_number_of_graphs(encoder_small: ModelHandle) -> None:
    from lab.workload import Workload

    workload = Workload(encoder_small)
    with create_runner("torch", {"device": "cuda", "cuda_graph": True, "graph_cache": 2}) as runner:
        runner.load(encoder_small)
        eager = create_runner("torch", {"device": "cuda"}).load(encoder_small)
        for n in (1, 3, 4, 5, 9):
            batch = workload.collate(workload.samples(n, f"graph{n}"))
            got, want = runner.infer(batch), eager.infer(batch)
            np.testing.assert_allclose(got["embedding"], want["embedding"], atol=1e-5, rtol=1e-4)
        eager.close()
        info = runner.describe()["cuda_graph"]
    assert info["enabled"], info
    assert info["graphs"] <= 2 and info["evictions"] >= 1


@pytest.mark.gpu
@needs_cuda
def test_cuda_providers_run_or_fail_loudly(encoder_small: ModelHandle) -> None:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        pytest.skip("skipped: this onnxruntime has no CUDAExecutionProvider")
    with create_runner("onnxruntime", {"provider": "cuda"}) as runner:
        runner.load(encoder_small)
        assert runner.describe()["providers"][0] == CUDA


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["pycuda", "torch"])
def test_cuda_buffers_round_trip(kind: str) -> None:
    """Both buffer paths, one interface: host -> device -> host through the stream."""
    from lab.runners.cuda_buffers import open_buffers

    try:
        buffers = open_buffers(kind, 0)
    except BackendUnavailable as exc:
        pytest.skip(f"skipped: {exc}")
    data = np.arange(1024, dtype=np.float32)
    device = buffers.device_empty(data.nbytes)
    host = buffers.host_empty((data.nbytes,), np.dtype(np.uint8))
    host[:] = data.view(np.uint8)
    start, end, elapsed_ms = buffers.event_pair()
    start()
    buffers.copy_htod(device, host)
    back = buffers.host_empty((data.nbytes,), np.dtype(np.uint8))
    buffers.copy_dtoh(back, device)
    end()
    buffers.synchronize()
    assert np.array_equal(back.view(np.float32), data) and elapsed_ms() >= 0
    del device
    buffers.close()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("math", ["fp32", "tf32", "fp16"])
def test_gpu_ceilings_in_the_runners_math(math: str) -> None:
    from lab.bench.roofline import measure_gpu_ceilings

    ceilings = measure_gpu_ceilings(
        "cuda:0", math, budget_s=0.2, matmul_n=4096, copy_bytes=256 << 20
    )
    assert ceilings["math"] == math and ceilings["peak_flops_per_s"] > 1e12


def test_gpu_extras_never_mix_onnxruntime_builds_and_pin_the_cuda_major(repo_root: Path) -> None:
    import re

    from lab.repository import tomllib  # tomli on Python 3.10

    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=;\[ ]", d)[0] for d in project["dependencies"]}
    for extra, cuda in (("gpu", "12"), ("gpu-cu13", "13")):
        names = {re.split(r"[<>=;\[ ]", d)[0] for d in project["optional-dependencies"][extra]}
        assert not {"onnxruntime", "onnxruntime-gpu"} <= core | names, extra
        assert f"tensorrt-cu{cuda}" in names and "tensorrt" not in names
        assert "pycuda" not in names  # it compiles against the CUDA toolkit: its own extra


def test_telemetry_watches_the_cuda_device_the_runner_names() -> None:
    from lab.bench.run import _ceiling_framework, _cuda_index
    from lab.runners.base import Runner
    from lab.runners.onnxruntime import OnnxRuntimeRunner
    from lab.runners.torch import TorchRunner

    def watched(runner: Runner | None) -> int:
        return _cuda_index(_ceiling_framework(runner, "fp32")[1])

    assert watched(TorchRunner(device="cuda:1")) == 1
    assert watched(OnnxRuntimeRunner(provider="cuda", device_id=2)) == 2
    assert watched(OnnxRuntimeRunner()) == 0  # CPU: nothing to watch
    assert watched(None) == 0  # remote target: no local GPU
