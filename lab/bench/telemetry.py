"""Telemetry sampled in a background thread while a scenario runs.

Process CPU (percent of one core, so 200 means two busy cores) and resident memory come from
psutil, for the harness together with its child processes (the runner workers: their work is
the run's work), and so does the CPU that other processes used meanwhile (in cores): a
benchmark on a machine that was not quiet says so. GPU utilisation, memory, power, clocks,
temperature, energy and clock-throttle reasons come from NVML (`nvidia-ml-py`, imported
lazily): without the package, without a driver or without a GPU, the report says "no GPU".
The runner's CUDA device is mapped to NVML's numbering (CUDA_VISIBLE_DEVICES, UUID); a metric
NVML refuses (utilisation on a MIG slice) is recorded in `gpu_errors` and the others go on.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

NO_GPU = "no GPU"
CHILDREN_EVERY_S = 1.0
SERIES_POINTS = 60  # the report keeps at most this many samples over time (for a plot)


def _nvml() -> Any:
    """The initialised pynvml module, or None when NVML is unavailable."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
    except pynvml.NVMLError:
        return None
    return pynvml


THROTTLE_REASONS = {  # nvmlClocksEventReason* / nvmlClocksThrottleReason* bits
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def throttle_names(mask: int) -> list[str]:
    """Names of the clock-throttle reason bits set in `mask` (unknown bits as hex)."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    return names + ([hex(unknown)] if unknown else [])


def _device_ids(nvml: Any, handle: Any) -> dict[str, Any]:
    """UUID, PCI bus id and compute capability; each one that NVML refuses is left out."""
    ids: dict[str, Any] = {}
    for key, call in (
        ("uuid", lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
        ("pci_bus_id", lambda: _text(nvml.nvmlDeviceGetPciInfo(handle).busId)),
        ("compute_capability", lambda: ".".join(map(str, nvml.nvmlDeviceGetCudaComputeCapability(handle)))),
    ):  # fmt: skip
        try:
            ids[key] = call()
        except (nvml.NVMLError, AttributeError):
            continue
    return ids


def nvml_index(
    cuda_index: int, visible: str | None, devices: list[dict[str, Any]], uuid: str | None = None
) -> int:
    """The NVML index of CUDA device `cuda_index`.

    NVML numbers every GPU of the machine in PCI bus order; CUDA numbers only those in
    CUDA_VISIBLE_DEVICES (indices or GPU-/MIG- UUID prefixes), in that order. A UUID (from the
    runner's process, torch.cuda.get_device_properties(i).uuid) wins when known. `devices`:
    [{"index", "uuid", "pci_bus_id"}] from NVML."""
    if uuid:
        wanted = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        for d in devices:
            if str(d.get("uuid", "")).lower() == wanted.lower():
                return int(d["index"])
    if visible is None or not visible.strip():
        return cuda_index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if cuda_index >= len(entries):
        raise IndexError(f"CUDA device {cuda_index} is not among CUDA_VISIBLE_DEVICES={visible}")
    entry = entries[cuda_index]
    if entry.isdigit():
        return int(entry)
    for d in devices:  # a UUID prefix, as CUDA accepts
        if str(d.get("uuid", "")).lower().startswith(entry.lower()):
            return int(d["index"])
    raise IndexError(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches no GPU NVML knows")


def gpu_inventory() -> dict[str, Any]:
    """GPU names, memory, UUID, PCI bus id, compute capability and driver for the fingerprint."""
    nvml = _nvml()
    if nvml is None:
        return {"gpu": NO_GPU}
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        devices = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append({"index": i, "name": _text(nvml.nvmlDeviceGetName(handle)),
                            "memory_total_bytes": int(memory.total), **_device_ids(nvml, handle)})  # fmt: skip
        return {"gpu": devices, "driver": _text(driver)}
    except nvml.NVMLError as exc:
        return {"gpu": NO_GPU, "nvml_error": str(exc)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Telemetry:
    """Samples process CPU%/RSS (and GPU metrics when NVML works) every `interval_s`."""

    def __init__(
        self, interval_s: float = 0.25, cuda_index: int = 0, gpu_uuid: str | None = None
    ) -> None:
        self.interval_s = interval_s
        self.cuda_index = cuda_index  # the runner's CUDA device, mapped to NVML's numbering
        self.gpu_uuid = gpu_uuid
        self.gpu_index: int | None = None
        self.gpu_errors: dict[str, str] = {}  # metric -> why NVML refused it (others go on)
        self.throttle_reasons: set[str] = set()
        self._energy_start_mj: float | None = None
        self.energy_j: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_percent: list[float] = []
        self.system_cpu_percent: list[float] = []
        self.rss_bytes: list[int] = []
        self.times_s: list[float] = []
        self.gpu: dict[str, list[float]] = {}
        self.gpu_status = NO_GPU
        self._nvml: Any = None
        self._handle: Any = None
        self._started = 0.0
        self._elapsed = 0.0

    def start(self) -> Telemetry:
        import psutil

        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only sets the reference point
        psutil.cpu_percent(None)
        self._psutil = psutil
        self._children: dict[int, Any] = {}
        self._refresh_children()
        self._cores = psutil.cpu_count() or 1
        self._nvml = _nvml()
        if self._nvml is not None:
            nvml = self._nvml
            try:
                devices = gpu_inventory()["gpu"]
                self.gpu_index = nvml_index(
                    self.cuda_index,
                    os.environ.get("CUDA_VISIBLE_DEVICES"),
                    devices if isinstance(devices, list) else [],
                    self.gpu_uuid,
                )
                self._handle = nvml.nvmlDeviceGetHandleByIndex(self.gpu_index)
                self.gpu_status = _text(nvml.nvmlDeviceGetName(self._handle))
            except (nvml.NVMLError, IndexError) as exc:
                self._nvml, self.gpu_status = None, f"{NO_GPU} ({exc})"
            else:
                self._energy_start_mj = self._energy_mj()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="bench-telemetry", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _refresh_children(self) -> None:
        """Start following child processes that appeared (a worker started mid-run). Listing
        them reads every process in /proc, so at most once a second."""
        now = time.perf_counter()
        if now - getattr(self, "_children_seen_at", -1e9) < CHILDREN_EVERY_S:
            return
        self._children_seen_at = now
        try:
            children = self._process.children(recursive=True)
        except self._psutil.Error:
            return
        for child in children:
            if child.pid not in self._children:
                try:
                    child.cpu_percent(None)
                except self._psutil.Error:
                    continue
                self._children[child.pid] = child

    def _sample(self) -> None:
        self._refresh_children()
        cpu = float(self._process.cpu_percent(None))
        rss = int(self._process.memory_info().rss)
        for pid, child in list(self._children.items()):
            try:
                cpu += float(child.cpu_percent(None))
                rss += int(child.memory_info().rss)
            except self._psutil.Error:  # it ended
                del self._children[pid]
        self.times_s.append(time.perf_counter() - self._started)
        self.cpu_percent.append(cpu)
        self.system_cpu_percent.append(float(self._psutil.cpu_percent(None)))
        self.rss_bytes.append(rss)
        if self._nvml is None:
            return
        nvml, handle = self._nvml, self._handle
        metrics: dict[str, Any] = {
            "utilization_percent": lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            "memory_used_bytes": lambda: float(nvml.nvmlDeviceGetMemoryInfo(handle).used),
            "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # mW
            "sm_clock_mhz": lambda: float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
            "memory_clock_mhz": lambda: float(
                nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)
            ),
            "temperature_c": lambda: float(
                nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
            ),
        }
        for key, read in metrics.items():
            if key in self.gpu_errors:
                continue  # refused once (e.g. utilisation on a MIG slice): not asked again
            try:
                value = read()
            except (nvml.NVMLError, AttributeError) as exc:
                self.gpu_errors[key] = f"{type(exc).__name__}: {exc}"
                continue
            self.gpu.setdefault(key, []).append(value)
        if "throttle_reasons" not in self.gpu_errors:
            try:
                reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or (
                    nvml.nvmlDeviceGetCurrentClocksThrottleReasons
                )
                self.throttle_reasons.update(throttle_names(int(reasons(handle))))
            except (nvml.NVMLError, AttributeError) as exc:
                self.gpu_errors["throttle_reasons"] = f"{type(exc).__name__}: {exc}"

    def _energy_mj(self) -> float | None:
        """Total energy since the driver loaded, in mJ (Volta and newer); None when refused."""
        nvml = self._nvml
        if nvml is None or "energy" in self.gpu_errors:
            return None
        try:
            return float(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except (nvml.NVMLError, AttributeError) as exc:
            self.gpu_errors["energy"] = f"{type(exc).__name__}: {exc}"
            return None

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._elapsed = time.perf_counter() - self._started
        if not self.cpu_percent:
            self._sample()
        end_mj = self._energy_mj() if self._energy_start_mj is not None else None
        if end_mj is not None and self._energy_start_mj is not None:
            self.energy_j = (end_mj - self._energy_start_mj) / 1000.0
        return self.summary()

    def summary(self) -> dict[str, Any]:
        cpu = np.asarray(self.cpu_percent, dtype=np.float64)
        system = np.asarray(self.system_cpu_percent, dtype=np.float64)
        rss = np.asarray(self.rss_bytes, dtype=np.float64)
        # Other processes' CPU, in cores: all cores' busy share minus this process's share.
        cores = getattr(self, "_cores", 1)
        others = np.maximum(system * cores / 100 - cpu / 100, 0) if system.size else system
        result: dict[str, Any] = {
            "samples": int(cpu.size),
            "interval_s": self.interval_s,
            "process_cpu_percent_mean": float(cpu.mean()) if cpu.size else None,
            "process_cpu_percent_max": float(cpu.max()) if cpu.size else None,
            "process_rss_bytes_max": int(rss.max()) if rss.size else None,
            "system_cpu_percent_mean": float(system.mean()) if system.size else None,
            "other_processes_cpu_cores_mean": float(others.mean()) if others.size else None,
            "gpu": self.gpu_status,
        }
        if self.gpu_index is not None:
            result["gpu_nvml_index"] = self.gpu_index
        if self.energy_j is not None:
            result["gpu_energy_j"] = self.energy_j
        if self.throttle_reasons:
            result["gpu_throttle_reasons"] = sorted(self.throttle_reasons)
        if self.gpu_errors:
            result["gpu_errors"] = dict(self.gpu_errors)
        result["series"] = self.series()
        if self.gpu:
            result["gpu_metrics"] = {
                key: {"mean": float(np.mean(v)), "max": float(np.max(v))}
                for key, v in self.gpu.items()
            }
        return result

    def series(self) -> dict[str, list[float]]:
        """The samples over time, thinned to at most SERIES_POINTS: seconds since start,
        harness + workers CPU (% of one core), the machine's CPU (% of all cores), RSS (MB)
        and, with a GPU, its utilisation (%) and memory used (MB)."""
        n = len(self.times_s)
        keep = sorted({round(i * (n - 1) / (SERIES_POINTS - 1)) for i in range(SERIES_POINTS)})
        keep = [i for i in keep if i < n] if n > SERIES_POINTS else list(range(n))
        series: dict[str, list[float]] = {
            "t_s": [round(self.times_s[i], 3) for i in keep],
            "process_cpu_percent": [round(self.cpu_percent[i], 1) for i in keep],
            "system_cpu_percent": [round(self.system_cpu_percent[i], 1) for i in keep],
            "rss_mb": [round(self.rss_bytes[i] / 1e6, 1) for i in keep],
        }
        gpu = {"utilization_percent": 1.0, "memory_used_bytes": 1e-6}
        for key, scale in gpu.items():
            values = self.gpu.get(key, [])
            if len(values) == n:
                name = "gpu_memory_used_mb" if key == "memory_used_bytes" else f"gpu_{key}"
                series[name] = [round(values[i] * scale, 1) for i in keep]
        return series

    def __enter__(self) -> Telemetry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop()
