"""A whole bench run: targets, runners, roofline, every scenario, replay check, the report.

`run_bench(config)` resolves the model, opens the runner (and the baseline runner) with
`open_runner`, measures the roofline inputs, then runs each configured scenario from the
`SCENARIOS` registry (lab.bench.scenarios) with telemetry, handing each one the results of
the scenarios before it; after the scenarios the replay check runs once. The report is a
plain dict (lab.bench.report).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from lab.bench.audit import replay_check
from lab.bench.config import BenchConfig, WorkerConfig
from lab.bench.metrics import scenario_metrics
from lab.bench.progress import Progress
from lab.bench.scenarios import SCENARIOS, Result
from lab.bench.scenarios.common import BASELINE, CANDIDATE, BenchContext
from lab.bench.target import InProcessTarget, Target
from lab.bench.telemetry import Telemetry
from lab.errors import ConfigError, LabError, WorkerLost
from lab.isolation import isolation_of, make_runner, spec_of, worker_lost, worker_usage
from lab.repository import ModelHandle
from lab.runners.base import Runner


# ----- targets ---------------------------------------------------------------------------
class TargetFactory:
    """Opens the target a scenario drives. In-process targets are rebuilt per scenario
    around one loaded runner (offline needs its own batch size); a remote target is shared."""

    def __init__(
        self,
        handle: ModelHandle,
        config: BenchConfig,
        runner: Runner | None = None,
        remote: Target | None = None,
    ) -> None:
        self.handle = handle
        self.config = config
        self.runner = runner
        self.remote = remote

    @contextmanager
    def open(
        self, max_batch_size: int | None = None, offline: bool = False, drain: bool = True
    ) -> Iterator[Target]:
        """A started target; on exit an in-process one finishes its queue (or, without
        `drain`, fails what is still queued and only waits for the batch in flight)."""
        if self.remote is not None:
            yield self.remote
            return
        assert self.runner is not None
        lost = worker_lost(self.runner)
        if lost is not None:
            raise WorkerLost(lost)
        batching = self.config.batching
        target = InProcessTarget(
            self.runner,
            max_batch_size=max_batch_size or batching.max_batch_size,
            max_queue_delay_us=0 if offline else batching.max_queue_delay_us,
            preferred_batch_sizes=() if offline else batching.preferred_batch_sizes,
        )
        target.start()
        try:
            yield target
        finally:
            target.stop(drain=drain)

    def describe(self) -> dict[str, Any]:
        if self.remote is not None:
            return self.remote.describe()
        assert self.runner is not None
        with self.open() as target:
            return target.describe()


def make_remote_target(url: str, handle: ModelHandle, config: BenchConfig) -> Target:
    try:
        from lab.bench.remote_target import RemoteTarget
    except ModuleNotFoundError as exc:
        if exc.name == "lab.bench.remote_target":
            raise ConfigError(
                "remote targets need lab/bench/remote_target.py, which is not in this build"
            ) from None
        raise
    return RemoteTarget(
        url, handle, concurrency=config.remote_concurrency, timeout_s=config.timeout_s
    )


def is_remote(target: str) -> bool:
    return target.startswith(("http://", "https://", "grpc://"))


# ----- runners ---------------------------------------------------------------------------
def open_runner(
    spec: str,
    options: Mapping[str, Any],
    handle: ModelHandle,
    stack: ExitStack,
    runner: Runner | None = None,
    worker: WorkerConfig | None = None,
) -> Runner:
    """The one place the bench creates and loads a runner (candidate and baseline alike):
    `spec` with `options` in a worker process as `worker` says (or `runner` as given: tests,
    the main job), loaded for `handle` if it is not yet, and closed when `stack` closes."""
    worker = worker or WorkerConfig()
    runner = runner or make_runner(
        spec,
        dict(options),
        isolation=worker.isolation,
        load_timeout_s=worker.load_timeout_s,
        infer_timeout_s=worker.worker_timeout_s,
    )
    stack.callback(runner.close)
    if not runner.is_loaded:
        runner.load(handle)
    return runner


def isolation_report(
    mode: str, runners: Mapping[str, Runner], aborted: str | None = None
) -> dict[str, Any]:
    """Where the runners ran, and each isolated worker's accounting."""
    return {
        "mode": mode,
        "worker": worker_usage(runners[CANDIDATE]) if CANDIDATE in runners else None,
        "baseline_worker": worker_usage(runners[BASELINE]) if BASELINE in runners else None,
        "aborted_scenario": aborted,
    }


# ----- roofline --------------------------------------------------------------------------
def _ceiling_framework(runner: Runner | None, precision: str = "fp32") -> tuple[str, str, str]:
    """(framework, device, math) the ceilings are measured with: on a GPU, torch with CUDA
    events in the runner's math mode; on the CPU one method (numpy) for every runner, so the
    roofline and compare's "machine differed" warning agree between runners."""
    if runner is None:
        return "numpy", "cpu", "fp32"
    name, options = spec_of(runner)
    if name == "torch":
        device = str(options.get("device", "cpu"))
        if device.startswith("cuda"):
            return "torch", device, str(options.get("dtype", "fp32"))
        return "numpy", "cpu", "fp32"
    gpu = name == "tensorrt" or (
        name == "onnxruntime" and str(options.get("provider", "cpu")) != "cpu"
    )
    if gpu:
        math = str(options.get("math") or ("fp32" if precision == "fp32" else precision))
        return "torch", f"cuda:{int(options.get('device_id', 0))}", math
    return "numpy", "cpu", "fp32"


def _cuda_index(device: str) -> int:
    """The CUDA index of `device` (a _ceiling_framework device: "cuda:1"; 0 on the CPU):
    telemetry watches the GPU the runner computes on."""
    index = device.partition(":")[2] if device.startswith("cuda") else ""
    return int(index) if index.isdigit() else 0


def measure_roofline(
    handle: ModelHandle,
    workload: Any,
    runner: Runner | None,
    progress: Progress,
    ceiling: tuple[str, str, str],
) -> dict[str, Any]:
    """{"work": ..., "ceilings": ...} for the report and the per-scenario attainment, or
    {"skipped": reason}. `ceiling`: the runner's _ceiling_framework (framework, device, math)."""
    from lab.bench.roofline import measure_ceilings, work_model

    if not handle.onnx_path.is_file():
        return {"skipped": f"no ONNX graph at {handle.onnx_path} to count work from"}
    if runner is None:
        return {
            "skipped": "remote target: the ceilings of this machine say nothing of the server's"
        }
    framework, device, math = ceiling
    with progress.phase("roofline: counting work and measuring ceilings", 3.0):
        pool = workload.samples(256, "roofline")
        work = work_model(handle.onnx_path, pool, handle.inputs)
        try:
            ceilings = measure_ceilings(framework, budget_s=0.5, device=device, math=math)
        except (ImportError, RuntimeError) as exc:  # e.g. CUDA asked for but not usable
            ceilings = measure_ceilings("numpy", budget_s=0.5)
            ceilings["fallback_reason"] = f"{framework} on {device}: {exc}"
    return {"work": work, "ceilings": ceilings}


# ----- scenarios -------------------------------------------------------------------------
def run_scenario(context: BenchContext, name: str, earlier: Mapping[str, Result]) -> Result:
    """One registered scenario with telemetry, wall time and its metrics."""
    scenario = SCENARIOS[name]
    telemetry = None
    if context.config.report.telemetry:
        # NVML watches the GPU the runner computes on (cuda:N mapped to NVML's numbering).
        telemetry = Telemetry(cuda_index=context.cuda_index)
    if telemetry is not None:
        telemetry.start()
    started = time.perf_counter()
    try:
        result = scenario.run(context.for_scenario(), MappingProxyType(dict(earlier)))
    finally:
        usage = telemetry.stop() if telemetry is not None else None
    result["wall_s"] = time.perf_counter() - started
    if usage and usage.get("gpu_energy_j") is not None and result.get("queries"):
        usage["gpu_energy_j_per_query"] = usage["gpu_energy_j"] / float(result["queries"])
    result["telemetry"] = usage
    result["metrics"] = scenario_metrics(result, scenario.metrics)
    return result


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def report_name(config: BenchConfig, handle: ModelHandle) -> str:
    if config.report.name:
        return config.report.name
    driven = "remote" if is_remote(config.target) else config.runner.rsplit(":", 1)[-1]
    return f"{handle.name}-{handle.size}-{driven}"


def runner_specs(config: BenchConfig) -> dict[str, str]:
    """The runner spec per role whose code the report should identify."""
    specs = {} if is_remote(config.target) else {CANDIDATE: config.runner}
    if config.baseline:
        specs[BASELINE] = config.baseline
    return specs


# ----- a partial run ---------------------------------------------------------------------
class PartialRun(Exception):
    """A run stopped by `error` (Ctrl-C, a late error, a bug) during `step`, after some
    scenarios finished: `report` holds what was measured, marked partial and INVALID. The
    caller writes it, then re-raises `error` (its exit code, its traceback if a bug)."""

    def __init__(self, report: dict[str, Any], step: str, error: BaseException) -> None:
        super().__init__(f"{step}: {describe_stop(error)}")
        self.report = report
        self.step = step
        self.error = error


def describe_stop(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    kind = "" if isinstance(error, LabError) else type(error).__name__
    return ": ".join(p for p in (kind, text) if p) or type(error).__name__


def partial_record(
    config: BenchConfig, step: str, report: Mapping[str, Any], error: BaseException
) -> dict[str, Any]:
    """The report's `partial`: where the run stopped, why, and what did and did not run."""
    done = [s["scenario"] for s in report["scenarios"]]
    return {
        "stopped_at": step,
        "reason": describe_stop(error),
        "completed": done,
        "not_run": [n for n in config.scenarios if n not in done and n != step],
    }


# ----- a whole run -----------------------------------------------------------------------
def run_bench(
    config: BenchConfig,
    progress: Progress | None = None,
    handle: ModelHandle | None = None,
    workload: Any = None,
    runner: Runner | None = None,
    baseline_runner: Runner | None = None,
    extra: Mapping[str, Any] | None = None,
    command: Sequence[str] | None = None,
    config_path: str | None = None,
) -> dict[str, Any]:
    """Run every configured scenario and return the report (see lab/bench/report.py).

    `handle`, `workload`, `runner` and `baseline_runner` override what the config names
    (tests and the harness self-benchmark pass their own); runners given here are loaded if
    needed and closed at the end either way. `command` and `config_path` (the command line
    and the --config file) go into the report's provenance."""
    from lab import __version__
    from lab.bench.environment import fingerprint, model_fingerprint
    from lab.bench.provenance import provenance
    from lab.bench.report import SCHEMA_VERSION, verdict

    started = time.perf_counter()
    progress = progress or Progress(enabled=False)
    if handle is None:
        from lab.repository import ModelRepository

        handle = ModelRepository(config.model_repository).handle(
            config.model, config.size, config.precision
        )
    if workload is None:
        from lab.workload import Workload

        workload = Workload.for_run(handle, config.seed)
    with ExitStack() as stack:
        targets: dict[str, TargetFactory] = {}
        candidate_runner: Runner | None = None
        runners: dict[str, Runner] = {}
        if is_remote(config.target):
            remote = make_remote_target(config.target, handle, config)
            remote.start()
            stack.callback(remote.stop)
            targets[CANDIDATE] = TargetFactory(handle, config, remote=remote)
        elif config.target in ("inprocess", "in-process"):
            candidate_runner = open_runner(
                config.runner, config.runner_options, handle, stack, runner, config.worker
            )
            runners[CANDIDATE] = candidate_runner
            targets[CANDIDATE] = TargetFactory(handle, config, runner=candidate_runner)
        else:
            raise ConfigError(
                f"unknown target {config.target!r}: use inprocess, http://host:port or grpc://host:port"
            )
        if config.baseline or baseline_runner is not None:
            loaded = open_runner(
                config.baseline or "",
                config.baseline_options,
                handle,
                stack,
                baseline_runner,
                config.worker,
            )
            runners[BASELINE] = loaded
            targets[BASELINE] = TargetFactory(handle, config, runner=loaded)
        ceiling = _ceiling_framework(candidate_runner, handle.precision)
        roofline: dict[str, Any] = {"skipped": "roofline disabled"}
        if config.report.roofline:
            roofline = measure_roofline(handle, workload, candidate_runner, progress, ceiling)
        context = BenchContext(
            config,
            handle,
            workload,
            targets,
            progress,
            work=roofline.get("work"),
            ceilings=roofline.get("ceilings"),
            cuda_index=_cuda_index(ceiling[1]),
        )
        report: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": "servelab-bench-report",
            "name": report_name(config, handle),
            "created_at": now_utc(),
            "servelab_version": __version__,
            "config": config.to_dict(),
            "environment": fingerprint(),
            "model": model_fingerprint(
                handle,
                getattr(workload, "seed_label", config.seed),
                getattr(workload, "seed_source", None),
            ),
            "targets": {role: factory.describe() for role, factory in targets.items()},
            "slo_ms": context.slo_ms,
            "provenance": provenance(runner_specs(config), command, config_path),
        }
        if report["provenance"]["dirty_reasons"]:
            report["environment"]["git"]["dirty"] = True
        report.update(extra or {})
        report["roofline"] = roofline
        results: dict[str, Result] = {}
        report["scenarios"] = []
        mode = "remote" if is_remote(config.target) else isolation_of(runners[CANDIDATE])
        aborted: str | None = None
        step = ""
        try:
            for name in config.scenarios:
                step = name
                try:
                    results[name] = run_scenario(context, name, results)
                except WorkerLost:  # the verdict gives the reason; report what ran so far
                    aborted = name
                    break
                report["scenarios"].append(results[name])
                if any(worker_lost(r) for r in runners.values()):
                    break
            report["replay"] = None
            checks = config.checks
            if checks.replay_check and not any(worker_lost(r) for r in runners.values()):
                step = "replay check"
                with (
                    progress.phase("replay check (TEST04)", 1.0),
                    targets[CANDIDATE].open(offline=True) as target,
                ):
                    report["replay"] = replay_check(
                        target,
                        workload,
                        count=checks.replay_count,
                        tolerance=checks.replay_tolerance,
                        timeout_s=config.timeout_s,
                    )
        except BaseException as exc:  # Ctrl-C, a late config error, a bug: keep what ran
            if not report["scenarios"]:
                raise
            report["partial"] = partial_record(config, step, report, exc)
            report.setdefault("replay", None)
            report["isolation"] = isolation_report(mode, runners, aborted)
            report["verdict"] = verdict(report)
            report["wall_s"] = time.perf_counter() - started
            raise PartialRun(report, step, exc) from exc
        report["isolation"] = isolation_report(mode, runners, aborted)
        report["verdict"] = verdict(report)
        report["wall_s"] = time.perf_counter() - started
    return report
