"""The versioned bench report: JSON (the record), Markdown (the summary), HTML (with plots).

The JSON layout is documented by `lab/bench/report_schema.json` (JSON Schema) and checked
with `lab.bench.schema.validate` when a report is written and when one is read. Top level:

    schema_version   "MAJOR.MINOR"; readers accept the same MAJOR
    kind             "servelab-bench-report"
    name, created_at, servelab_version, wall_s
    config           every BenchConfig field (the full configuration): top-level fields and
                     one object per group (batching, checks, find_peak, report); 1.0
                     reports have every field flat
    environment      CPU, GPU and driver, memory, library versions, git commit and dirty flag
                     (modified or untracked files, or an uncommitted runner plugin)
    model            name, size, precision, ONNX and weights sha256, public seed, seed label, SLO
    targets          what was driven: {"candidate": ..., "baseline": ...}; each runner's
                     describe() with, on GPU runners, math_mode and (onnxruntime) the
                     providers asked for and those that actually ran
    provenance       the command line, the --config file's content, each runner's source
                     and its sha256, why the tree counts as dirty (lab.bench.provenance)
    verify           the pre-run verify result (main job) or absent
    roofline         {"work": per-sample FLOPs/bytes, "ceilings": peak FLOP/s and bytes/s}
                     or {"skipped": reason}
    scenarios        one entry per scenario: queries, samples, duration, throughput (with CI),
                     latency (min/mean/max, p50/90/95/99/99.9 with `claimed`), latency_ci,
                     queue / compute / issue_lag splits, batch sizes, the sparse latency
                     histogram (exactly mergeable), stability windows, validity (valid,
                     reasons, warnings), audit, optional baseline (with its latency
                     histogram since 1.4, for the plots) + speedup, roofline attainment,
                     telemetry (samples over time in `series` since 1.4), and `metrics`
                     (name, value, unit, direction, ci, primary) for comparisons
    replay           the TEST04 replay check or null
    partial          only in a report of a run stopped early (Ctrl-C, a late error; 1.4):
                     {"stopped_at", "reason", "completed", "not_run"}; such a run is INVALID
    verdict          {"valid", "audit_passed", "replay_passed", "reasons"}

Latencies are in ms, throughputs in samples/s or queries/s, durations in s.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from lab.bench.schema import validate
from lab.errors import ConfigError

SCHEMA_VERSION = "1.4"


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """VALID only when every scenario is VALID, every audit passed and the replay check did
    not flag the run; every reason is listed."""
    reasons: list[str] = []
    audits: list[bool] = []
    for scenario in report.get("scenarios", []):
        name = scenario["scenario"]
        reasons.extend(f"{name}: {r}" for r in scenario["validity"]["reasons"])
        audit = scenario.get("audit")
        if audit is not None:
            audits.append(bool(audit["passed"]))
    replay = report.get("replay")
    replay_passed = None if replay is None else not replay["flagged"]
    if replay is not None and replay["flagged"]:
        reasons.append(f"replay check: {replay.get('reason', 'flagged')}")
    warnings: list[str] = []
    isolation = report.get("isolation") or {}
    if isolation.get("mode") == "none":
        warnings.append(
            "isolation none: the runner shared the harness's process (clocks, references, "
            "checker); a grader should refuse this report"
        )
    for key, role in (("worker", "runner"), ("baseline_worker", "baseline")):
        worker = isolation.get(key)
        if not worker:
            continue
        if worker.get("lost"):
            reasons.append(f"{role}: {worker['lost']}")
        if worker.get("cpu_over_budget"):
            reasons.append(
                f"{role} worker used {worker['cpu_s']:.1f} CPU-s in {worker['wall_s']:.1f} s "
                f"on {worker['cores']} cores: more than the machine can give, so the "
                f"measured time cannot be all the time it spent"
            )
    partial = report.get("partial")
    if partial:
        not_run = ", ".join(partial["not_run"]) or "nothing"
        reasons.append(
            f"partial report: {partial['stopped_at']} did not finish ({partial['reason']}); "
            f"not run: {not_run}"
        )
    if isolation.get("aborted_scenario"):
        reasons.append(
            f"{isolation['aborted_scenario']}: not run to the end (the runner worker was lost)"
        )
    return {
        "valid": not reasons,
        "audit_passed": all(audits) if audits else None,
        "replay_passed": replay_passed,
        "reasons": reasons,
        "warnings": warnings,
    }


def jsonable(value: Any) -> Any:
    """Plain JSON types only: numpy scalars and arrays converted, NaN and inf become null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Path):
        return str(value)
    return value


def check_report(report: Any, where: str = "report") -> None:
    """Raise ConfigError with the first problems when `report` breaks the schema."""
    if not isinstance(report, dict):
        raise ConfigError(f"{where} is not a servelab bench report (not a JSON object)")
    version = str(report.get("schema_version", ""))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ConfigError(
            f"{where} has schema_version {version or 'none'}; this servelab reads "
            f"{SCHEMA_VERSION.split('.')[0]}.x"
        )
    errors = validate(report)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ConfigError(
            f"{where} does not match the report schema: {'; '.join(errors[:3])}{more}"
        )


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(jsonable(report), indent=1, sort_keys=False, allow_nan=False) + "\n"


def load_report(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no report at {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    check_report(data, str(path))
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "report"


def write_reports(
    report: dict[str, Any], directory: Path | str, html: bool = True, latest: bool = True
) -> dict[str, Path]:
    """Write <timestamp>-<model>-<runner>.json/.md/.html (and latest.*) under `directory`."""
    from lab.bench.render import render_html, render_markdown

    clean = jsonable(report)
    check_report(clean, "the report being written")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = clean["created_at"].replace(":", "").replace("-", "").replace("+0000", "Z")
    model = clean["model"]
    runner = clean["config"]["runner"].rsplit(":", 1)[-1]
    if clean["config"]["target"] not in ("inprocess", "in-process"):
        runner = "remote"
    base = _slug(f"{stamp}-{model['name']}-{model['size']}-{runner}")
    name = clean["config"]["report"]["name"]
    if name:
        base = _slug(f"{stamp}-{name}")
    texts = {".json": dumps(clean), ".md": render_markdown(clean)}
    if html:
        texts[".html"] = render_html(clean)
    written: dict[str, Path] = {}
    for suffix, text in texts.items():
        path = directory / f"{base}{suffix}"
        path.write_text(text)
        written[suffix] = path
        if latest:
            (directory / f"latest{suffix}").write_text(text)
    return written
