"""What differs between bench reports, sorted by what it means for a comparison.

    identity        model name, size and precision: different ones are different workloads,
                    so `servelab compare` refuses them (exit 2) unless --force
    configuration   every setting that changes the numbers: the runner and its options, the
                    batcher (as set and as it ran), SLO, durations and query counts,
                    stability, audit and replay settings, find-peak, seeds, isolation
    environment     the machine and its software: CPU, GPU, driver, memory, libraries, git
                    commit, model and weights hashes, a busy machine, a dirty tree, and
                    ceilings that moved (only when measured the same way)

Each function compares every report with the first one and returns one line per difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lab.errors import ConfigError

BUSY_CORES = 0.25  # other processes' mean CPU above which a run was not on a quiet machine
CEILING_DRIFT = 0.15  # ceilings measured at run start that differ more than this

# Settings that change where a report goes or how long the harness waits for a hung
# worker, not what is measured.
NOT_RESULT_SETTINGS = frozenset(
    {
        "model",
        "size",
        "precision",
        "model_repository",
        "main_job",
        "report.output",
        "report.name",
        "report.html",
        "worker.load_timeout_s",
        "worker.worker_timeout_s",
    }
)


def identity(report: Mapping[str, Any]) -> str:
    model = report["model"]
    return f"{model['name']} {model['size']} {model['precision']}"


def check_comparable(
    reports: Sequence[Mapping[str, Any]], names: Sequence[str], force: bool
) -> list[str]:
    """Raise ConfigError when the reports measured different models, sizes or precisions;
    with `force`, return those differences as warnings instead."""
    first = identity(reports[0])
    differing = [
        f"{name} is {identity(r)}"
        for name, r in zip(names[1:], reports[1:])
        if identity(r) != first
    ]
    if not differing:
        return []
    if not force:
        raise ConfigError(
            f"refusing to compare different workloads: {names[0]} is {first}, "
            f"{', '.join(differing)} (--force compares them anyway)"
        )
    return [f"different workload (forced): {d} (vs {first} in {names[0]})" for d in differing]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _shown(value: Any) -> str:
    return "default" if value is None else str(value)


def result_settings(report: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that changes the numbers, as configured and as it ran."""
    settings = {
        key: value
        for key, value in _flatten(report.get("config", {})).items()
        if key not in NOT_RESULT_SETTINGS
    }
    model = report["model"]
    settings["effective SLO (ms)"] = model.get("slo_ms")
    settings["workload seed"] = f"{model.get('seed')} ({model.get('seed_source', 'unknown')})"
    candidate = (report.get("targets") or {}).get("candidate") or {}
    for key in ("max_batch_size", "max_queue_delay_us", "preferred_batch_sizes", "max_queue_size"):
        if key in candidate:
            settings[f"effective batcher {key}"] = candidate[key]
    worker = (candidate.get("runner") or {}).get("reported_by_worker") or {}
    if "options" in worker:
        settings["effective runner options"] = worker["options"]
    return settings


def configuration_differences(
    reports: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> list[str]:
    base = result_settings(reports[0])
    lines: list[str] = []
    for name, report in zip(names[1:], reports[1:]):
        other = result_settings(report)
        for key in sorted(set(base) | set(other)):
            if base.get(key) != other.get(key):
                lines.append(
                    f"{name}: {key} = {_shown(other.get(key))} "
                    f"(vs {_shown(base.get(key))} in {names[0]})"
                )
    return lines


def _facts(report: Mapping[str, Any]) -> dict[str, Any]:
    env, model = report["environment"], report["model"]
    gpu = env["gpu"].get("gpu")
    gpus = gpu if isinstance(gpu, str) else ", ".join(d["name"] for d in gpu)
    facts = {
        "host": env.get("hostname"),
        "OS": env.get("os"),
        "CPU": env["cpu"]["model"],
        "logical cores": env["cpu"]["logical_cores"],
        "memory (bytes)": env.get("memory_bytes"),
        "GPU": gpus,
        "GPU driver": env["gpu"].get("driver"),
        "git commit": (env.get("git") or {}).get("commit"),
        "model hash (onnx sha256)": model.get("onnx_sha256"),
        "weights hash": model.get("weights_sha256"),
    }
    facts.update({f"library {k}": v for k, v in env["libraries"].items()})
    return facts


def _ceiling_warnings(
    name: str, first_name: str, ceilings: Mapping[str, Any], first: Mapping[str, Any]
) -> list[str]:
    how = (ceilings.get("framework"), ceilings.get("device"))
    first_how = (first.get("framework"), first.get("device"))
    if how != first_how:
        return [
            f"{name}: ceilings measured with {how[0]} on {how[1]} (vs {first_how[0]} on "
            f"{first_how[1]} in {first_name}): not comparable, so not compared"
        ]
    warnings = []
    for key, label in (("peak_flops_per_s", "FLOP/s"), ("peak_bytes_per_s", "bandwidth")):
        ratio = ceilings[key] / first[key] if first[key] else 1.0
        if abs(ratio - 1) > CEILING_DRIFT:
            warnings.append(
                f"{name}: measured peak {label} is {ratio:.2f}x that of {first_name}: "
                "the machine (or its load) differed"
            )
    return warnings


def environment_warnings(reports: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
    """What differs between report 0 and each other report that could explain a difference,
    and what made any one report's machine unreliable (busy, dirty tree)."""
    warnings: list[str] = []
    base = _facts(reports[0])
    for name, report in zip(names[1:], reports[1:]):
        other = _facts(report)
        for key in list(base) + [k for k in other if k not in base]:
            if other.get(key) != base.get(key):
                warnings.append(
                    f"{name}: different {key}: {other.get(key)} (vs {base.get(key)} in {names[0]})"
                )
    first = (reports[0].get("roofline") or {}).get("ceilings")
    for i, (name, report) in enumerate(zip(names, reports)):
        for scenario in report["scenarios"]:
            others = (scenario.get("telemetry") or {}).get("other_processes_cpu_cores_mean")
            if others is not None and others > BUSY_CORES:
                warnings.append(
                    f"{name}: other processes used {others:.2f} CPU cores on average during "
                    f"{scenario['scenario']}: the machine was not quiet"
                )
        ceilings = (report.get("roofline") or {}).get("ceilings")
        if i and ceilings and first:
            warnings += _ceiling_warnings(name, names[0], ceilings, first)
        if report["environment"]["git"].get("dirty"):
            warnings.append(f"{name}: measured from a dirty git tree (uncommitted changes)")
    return warnings
