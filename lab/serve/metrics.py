"""Prometheus text exposition with Triton's metric names, so existing dashboards work.

Triton's (labels model, version): counters nv_inference_request_success / _failure (the
latter also labelled reason: REJECTED, CANCELED, BACKEND, OTHER),
nv_inference_count (inferences, i.e. batch rows), nv_inference_exec_count (batch executions),
cumulative-microsecond counters nv_inference_request_duration_us, _queue_duration_us,
_compute_input_duration_us, _compute_infer_duration_us, _compute_output_duration_us, and the
gauge nv_inference_pending_request_count. GPU gauges (label gpu_uuid) appear only when NVML
finds a GPU; host gauges nv_cpu_utilization, nv_cpu_memory_total_bytes / _used_bytes come
from /proc. Ours: servelab_batch_size (histogram of executed batch sizes),
servelab_model_degraded (1 while the fallback answers), servelab_fallback_request_count,
servelab_inline_request_count (requests alone in the server, run on the event loop) and
servelab_primary_failure_count; drift (lab/serve/drift.py, absent with --no-drift):
servelab_input_psi (label feature) and servelab_output_psi (label output), the population
stability index of the last servelab_drift_window_rows rows against the reference workload,
servelab_drift_status (0 ok, 1 warn: some PSI >= 0.1, 2 alert: some PSI >= 0.25 by default),
servelab_drift_fallback_active (1 while the drift policy routes to the fallback) and
servelab_drift_dropped_batches (batches the monitor skipped because it lagged behind).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lab.serve.core import ModelServer, ModelState
from lab.serve.errors import FAILURE_REASONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(**labels: str) -> str:
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items()
    )
    return "{" + inner + "}"


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def add(self, labels: str, value: float, suffix: str = "") -> None:
        text = repr(float(value)) if isinstance(value, float) else str(value)
        self.lines.append(f"{self.name}{suffix}{labels} {text}")


def _batch_buckets(max_batch_size: int) -> list[int]:
    buckets, b = [], 1
    while b < max_batch_size:
        buckets.append(b)
        b *= 2
    buckets.append(max_batch_size)
    return buckets


class GpuGauges:
    """NVML gauges, imported lazily; absent (no lines at all) without a GPU or NVML."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[tuple[str, Any]] = []
        try:
            import pynvml  # nvidia-ml-py, from the gpu extra
        except ImportError:
            return  # the CPU path has no GPU gauges
        try:
            pynvml.nvmlInit()
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                self._handles.append((uuid if isinstance(uuid, str) else uuid.decode(), handle))
        except pynvml.NVMLError:  # no driver or no device
            self._handles = []
            return
        self._nvml = pynvml

    @property
    def present(self) -> bool:
        return bool(self._handles)

    def families(self) -> list[_Family]:
        if not self._handles:
            return []
        nvml = self._nvml
        util = _Family("nv_gpu_utilization", "gauge", "GPU utilization rate [0.0 - 1.0)")
        used = _Family("nv_gpu_memory_used_bytes", "gauge", "GPU used memory, in bytes")
        total = _Family("nv_gpu_memory_total_bytes", "gauge", "GPU total memory, in bytes")
        power = _Family("nv_gpu_power_usage", "gauge", "GPU power usage in watts")
        for uuid, handle in self._handles:
            labels = _labels(gpu_uuid=uuid)
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                milliwatts = nvml.nvmlDeviceGetPowerUsage(handle)
            except nvml.NVMLError:
                continue  # a device that stops answering drops out of this scrape only
            util.add(labels, rates.gpu / 100.0)
            used.add(labels, int(memory.used))
            total.add(labels, int(memory.total))
            power.add(labels, milliwatts / 1000.0)
        return [util, used, total, power]


class CpuGauges:
    """Triton's host gauges from /proc: nv_cpu_utilization (busy share of all CPUs since the
    previous scrape, [0.0 - 1.0]) and nv_cpu_memory_total_bytes / _used_bytes (used = total -
    available). Absent (no lines) where /proc is not there."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._last: tuple[int, int] | None = None  # (busy, total) jiffies at the last scrape

    def _cpu_times(self) -> tuple[int, int] | None:
        try:
            first = (self.proc / "stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        if not first or first[0] != "cpu":
            return None
        values = [int(v) for v in first[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        total = sum(values[:8])  # guest time is already counted in user / nice
        return total - idle, total

    def _memory(self) -> tuple[int, int] | None:
        try:
            lines = (self.proc / "meminfo").read_text().splitlines()
        except OSError:
            return None
        fields = {}
        for line in lines:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                fields[key] = int(parts[0]) * 1024  # kB
        if "MemTotal" not in fields or "MemAvailable" not in fields:
            return None
        return fields["MemTotal"], fields["MemTotal"] - fields["MemAvailable"]

    def families(self) -> list[_Family]:
        families = []
        times = self._cpu_times()
        if times is not None:
            busy, total = times
            last_busy, last_total = self._last or (0, 0)
            self._last = times
            span = total - last_total
            util = _Family("nv_cpu_utilization", "gauge", "CPU utilization rate [0.0 - 1.0]")
            util.add("", (busy - last_busy) / span if span > 0 else 0.0)
            families.append(util)
        memory = self._memory()
        if memory is not None:
            total_bytes = _Family(
                "nv_cpu_memory_total_bytes", "gauge", "CPU total memory (RAM), in bytes"
            )
            used_bytes = _Family(
                "nv_cpu_memory_used_bytes", "gauge", "CPU used memory (RAM), in bytes"
            )
            total_bytes.add("", memory[0])
            used_bytes.add("", memory[1])
            families += [total_bytes, used_bytes]
        return families


def render(server: ModelServer, gpu: GpuGauges | None = None, cpu: CpuGauges | None = None) -> str:
    """The whole /metrics page."""
    f = {
        "success": _Family(
            "nv_inference_request_success",
            "counter",
            "Number of successful inference requests, all batch sizes",
        ),
        "failure": _Family(
            "nv_inference_request_failure",
            "counter",
            "Number of failed inference requests, all batch sizes",
        ),
        "count": _Family(
            "nv_inference_count", "counter", "Number of inferences performed (batch rows)"
        ),
        "exec": _Family(
            "nv_inference_exec_count", "counter", "Number of model executions performed"
        ),
        "request_us": _Family(
            "nv_inference_request_duration_us",
            "counter",
            "Cumulative inference request duration in microseconds",
        ),
        "queue_us": _Family(
            "nv_inference_queue_duration_us",
            "counter",
            "Cumulative inference queuing duration in microseconds",
        ),
        "input_us": _Family(
            "nv_inference_compute_input_duration_us",
            "counter",
            "Cumulative compute input duration in microseconds",
        ),
        "infer_us": _Family(
            "nv_inference_compute_infer_duration_us",
            "counter",
            "Cumulative compute inference duration in microseconds",
        ),
        "output_us": _Family(
            "nv_inference_compute_output_duration_us",
            "counter",
            "Cumulative inference compute output duration in microseconds",
        ),
        "pending": _Family(
            "nv_inference_pending_request_count",
            "gauge",
            "Instantaneous number of pending requests awaiting execution per-model",
        ),
        "degraded": _Family(
            "servelab_model_degraded",
            "gauge",
            "1 while the circuit breaker routes requests to the fallback runner",
        ),
        "fallback": _Family(
            "servelab_fallback_request_count",
            "counter",
            "Number of successful requests answered by the fallback runner",
        ),
        "inline": _Family(
            "servelab_inline_request_count",
            "counter",
            "Number of requests run on the event loop, alone, without the batcher's hand-offs",
        ),
        "primary_failures": _Family(
            "servelab_primary_failure_count",
            "counter",
            "Number of batches the primary runner failed or timed out on",
        ),
    }
    drift = {
        "input_psi": _Family(
            "servelab_input_psi",
            "gauge",
            "Population stability index of an input feature over the sliding window",
        ),
        "output_psi": _Family(
            "servelab_output_psi",
            "gauge",
            "Population stability index of an output over the sliding window",
        ),
        "rows": _Family("servelab_drift_window_rows", "gauge", "Rows in the drift window"),
        "status": _Family(
            "servelab_drift_status", "gauge", "Worst drift level: 0 ok, 1 warn, 2 alert"
        ),
        "fallback": _Family(
            "servelab_drift_fallback_active",
            "gauge",
            "1 while the drift policy routes requests to the fallback runner",
        ),
        "dropped": _Family(
            "servelab_drift_dropped_batches",
            "counter",
            "Batches the drift monitor skipped because it lagged behind",
        ),
    }
    histogram = _Family("servelab_batch_size", "histogram", "Executed batch sizes")
    for state in server.models.values():
        _model_lines(state, f, histogram)
        _drift_lines(state, drift)
    families: Iterable[_Family] = [
        *f.values(),
        histogram,
        *(fam for fam in drift.values() if len(fam.lines) > 2),
        *(gpu.families() if gpu else []),
        *(cpu.families() if cpu else []),
    ]
    return "\n".join(line for fam in families for line in fam.lines) + "\n"


def _model_lines(state: ModelState, f: dict[str, _Family], histogram: _Family) -> None:
    labels = _labels(model=state.name, version=state.spec.version)
    stats = state.stats
    with stats.lock:
        f["success"].add(labels, stats.success.count)
        for reason in FAILURE_REASONS:  # Triton's reason label, every reason even at 0
            reason_labels = _labels(model=state.name, reason=reason, version=state.spec.version)
            f["failure"].add(reason_labels, stats.fail_reasons.get(reason, 0))
        f["count"].add(labels, stats.inference_count)
        f["exec"].add(labels, stats.execution_count)
        f["request_us"].add(labels, (stats.success.ns + stats.fail.ns) // 1000)
        f["queue_us"].add(labels, stats.queue.ns // 1000)
        f["input_us"].add(labels, stats.compute_input.ns // 1000)
        f["infer_us"].add(labels, stats.compute_infer.ns // 1000)
        f["output_us"].add(labels, stats.compute_output.ns // 1000)
        f["fallback"].add(labels, stats.fallback_requests)
        f["inline"].add(labels, stats.inline_requests)
        sizes = {size: c.compute_infer.count for size, c in stats.batches.items()}
    f["pending"].add(labels, state.batcher.pending)
    f["degraded"].add(labels, int(state.degraded))
    f["primary_failures"].add(labels, state.breaker.total_failures)
    cumulative = 0
    total_rows = sum(size * n for size, n in sizes.items())
    for bound in _batch_buckets(state.spec.max_batch_size):
        cumulative = sum(n for size, n in sizes.items() if size <= bound)
        le = _labels(model=state.name, version=state.spec.version, le=str(bound))
        histogram.add(le, cumulative, "_bucket")
    inf = _labels(model=state.name, version=state.spec.version, le="+Inf")
    histogram.add(inf, sum(sizes.values()), "_bucket")
    histogram.add(labels, total_rows, "_sum")
    histogram.add(labels, sum(sizes.values()), "_count")


def _drift_lines(state: ModelState, f: dict[str, _Family]) -> None:
    monitor = state.drift
    if monitor is None:
        return
    monitor.refresh()
    version = state.spec.version
    for feature, value in monitor.input_psi.items():
        f["input_psi"].add(_labels(feature=feature, model=state.name, version=version), value)
    for output, value in monitor.output_psi.items():
        f["output_psi"].add(_labels(model=state.name, output=output, version=version), value)
    labels = _labels(model=state.name, version=version)
    f["rows"].add(labels, monitor.window_rows)
    f["status"].add(labels, monitor.status())
    f["fallback"].add(labels, int(monitor.fallback_active))
    f["dropped"].add(labels, monitor.dropped_batches)
