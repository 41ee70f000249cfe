"""`servelab compare A.json B.json ...`: reports side by side.

Order of the output: correctness and validity first (a fast invalid run is not a result),
then environment warnings (different CPU, GPU, driver, model or weights hash, libraries,
seed, dirty tree), then every metric with its declared direction, its 95% interval, the
ratio against the first report (oriented so that > 1 is better) and a "within noise" flag,
then each report's speed-up against its own same-run baseline, which is the number to
compare across machines.

Within noise: the two 95% intervals overlap, or the difference is below the noise floor
(default 10%, perf_analyzer's stability criterion). Bootstrap intervals only see the noise
inside one run; the floor covers run-to-run variation of the machine they cannot see.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.bench.render import _html_table, _markdown_table, fmt, page
from lab.bench.report import load_report

NOISE_FLOOR = 0.10
BUSY_CORES = 0.25  # other processes' mean CPU above which a run was not on a quiet machine
CEILING_DRIFT = 0.15  # ceilings measured at run start that differ more than this


@dataclass
class MetricRow:
    scenario: str
    name: str
    unit: str
    direction: str
    primary: bool
    values: list[dict[str, Any] | None]  # per report: the metric entry or None
    ratios: list[float | None] = field(default_factory=list)  # vs report 0, > 1 better
    within_noise: list[bool | None] = field(default_factory=list)


@dataclass
class Comparison:
    names: list[str]
    reports: list[dict[str, Any]]
    warnings: list[str]
    rows: list[MetricRow]
    noise_floor: float

    @property
    def all_valid(self) -> bool:
        return all(r["verdict"]["valid"] for r in self.reports)

    @property
    def primary_within_noise(self) -> bool:
        flags = [f for row in self.rows if row.primary for f in row.within_noise[1:]]
        return all(f is not False for f in flags) and bool(flags)

    def verdict(self) -> str:
        if not self.all_valid:
            invalid = [n for n, r in zip(self.names, self.reports) if not r["verdict"]["valid"]]
            return f"not comparable as results: INVALID report(s): {', '.join(invalid)}"
        if self.primary_within_noise:
            missing = sorted(
                {
                    f"{row.scenario} {row.name}"
                    for row in self.rows
                    if row.primary and any(f is None for f in row.within_noise[1:])
                }
            )
            if missing:
                return "within noise where both were measured; not in every report: " + ", ".join(
                    missing
                )
            return "within noise: every primary metric agrees with the first report"
        differing = sorted(
            {
                f"{row.scenario} {row.name}"
                for row in self.rows
                if row.primary and any(f is False for f in row.within_noise[1:])
            }
        )
        if not differing:
            return "no primary metric appears in more than one report"
        return f"differs beyond noise: {', '.join(differing)}"


def _interval(entry: dict[str, Any]) -> tuple[float, float] | None:
    ci = entry.get("ci")
    if ci and all(c is not None for c in ci):
        return float(ci[0]), float(ci[1])
    return None


def same_within_noise(a: dict[str, Any], b: dict[str, Any], noise_floor: float) -> bool | None:
    """Do two values of one metric agree within noise? None when either is missing."""
    if a.get("value") is None or b.get("value") is None:
        return None
    va, vb = float(a["value"]), float(b["value"])
    scale = max(abs(va), abs(vb))
    if scale == 0 or abs(va - vb) / scale <= noise_floor:
        return True
    ia, ib = _interval(a), _interval(b)
    return ia is not None and ib is not None and ia[0] <= ib[1] and ib[0] <= ia[1]


def _ratio(first: dict[str, Any], other: dict[str, Any], direction: str) -> float | None:
    a, b = first.get("value"), other.get("value")
    if a is None or b is None or a == 0 or b == 0:
        return None
    return float(b) / float(a) if direction == "higher" else float(a) / float(b)


def environment_warnings(reports: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """What differs between report 0 and each other report that could explain a difference."""

    def facts(r: dict[str, Any]) -> dict[str, Any]:
        env, model = r["environment"], r["model"]
        gpu = env["gpu"].get("gpu")
        gpus = gpu if isinstance(gpu, str) else ", ".join(d["name"] for d in gpu)
        libs = env["libraries"]
        return {
            "CPU": env["cpu"]["model"],
            "logical cores": env["cpu"]["logical_cores"],
            "GPU": gpus,
            "GPU driver": env["gpu"].get("driver"),
            "model": f"{model['name']} {model['size']} {model['precision']}",
            "model hash (onnx sha256)": model.get("onnx_sha256"),
            "weights hash": model.get("weights_sha256"),
            "seed": model.get("seed"),
            "onnxruntime": libs.get("onnxruntime"),
            "torch": libs.get("torch"),
            "numpy": libs.get("numpy"),
            "runner": r["config"]["runner"],
            "target": r["config"]["target"],
        }

    warnings: list[str] = []
    base = facts(reports[0])
    for name, report in zip(names[1:], reports[1:]):
        other = facts(report)
        for key, value in base.items():
            if other[key] != value:
                warnings.append(f"{name}: different {key}: {other[key]} (vs {value} in {names[0]})")
    for name, report in zip(names, reports):
        for scenario in report["scenarios"]:
            usage = scenario.get("telemetry") or {}
            others = usage.get("other_processes_cpu_cores_mean")
            if others is not None and others > BUSY_CORES:
                warnings.append(
                    f"{name}: other processes used {others:.2f} CPU cores on average during "
                    f"{scenario['scenario']}: the machine was not quiet"
                )
        ceilings = (report.get("roofline") or {}).get("ceilings")
        first = (reports[0].get("roofline") or {}).get("ceilings")
        if ceilings and first and report is not reports[0]:
            for key, label in (("peak_flops_per_s", "FLOP/s"), ("peak_bytes_per_s", "bandwidth")):
                ratio = ceilings[key] / first[key] if first[key] else 1.0
                if abs(ratio - 1) > CEILING_DRIFT:
                    warnings.append(
                        f"{name}: measured peak {label} is {ratio:.2f}x that of {names[0]}: "
                        "the machine (or its load) differed"
                    )
        if report["environment"]["git"].get("dirty"):
            warnings.append(f"{name}: measured from a dirty git tree (uncommitted changes)")
    return warnings


def compare_reports(
    reports: Sequence[dict[str, Any]], names: Sequence[str], noise_floor: float = NOISE_FLOOR
) -> Comparison:
    rows: dict[tuple[str, str], MetricRow] = {}
    for i, report in enumerate(reports):
        seen_scenarios: dict[str, int] = {}
        for scenario in report["scenarios"]:
            label = scenario["scenario"]
            seen_scenarios[label] = seen_scenarios.get(label, 0) + 1
            if seen_scenarios[label] > 1:
                label = f"{label}#{seen_scenarios[label]}"
            for metric in scenario.get("metrics", []):
                key = (label, metric["name"])
                if key not in rows:
                    rows[key] = MetricRow(
                        label,
                        metric["name"],
                        metric["unit"],
                        metric["direction"],
                        bool(metric["primary"]),
                        [None] * len(reports),
                    )
                rows[key].values[i] = metric
    for row in rows.values():
        first = row.values[0]
        for value in row.values:
            if first is None or value is None:
                row.ratios.append(None)
                row.within_noise.append(None)
                continue
            row.ratios.append(_ratio(first, value, row.direction))
            row.within_noise.append(same_within_noise(first, value, noise_floor))
    return Comparison(
        list(names),
        list(reports),
        environment_warnings(reports, names),
        list(rows.values()),
        noise_floor,
    )


def load_and_compare(paths: Sequence[Path | str], noise_floor: float = NOISE_FLOOR) -> Comparison:
    reports = [load_report(p) for p in paths]
    names = _short_names([Path(p) for p in paths])
    return compare_reports(reports, names, noise_floor)


def _short_names(paths: Sequence[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [str(p) for p in paths]


# ----- rendering ---------------------------------------------------------------------------
def _value_text(entry: dict[str, Any] | None) -> str:
    if entry is None or entry.get("value") is None:
        return "-"
    text = fmt(entry["value"])
    ci = _interval(entry)
    if ci is not None:
        text += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    return text


def tables(comparison: Comparison) -> dict[str, list[list[str]]]:
    names = comparison.names
    validity = [["report", "verdict", "audit", "replay check", "reasons"]]
    for name, r in zip(names, comparison.reports):
        v = r["verdict"]
        validity.append(
            [
                name,
                "VALID" if v["valid"] else "INVALID",
                {None: "not run", True: "passed", False: "FAILED"}[v["audit_passed"]],
                {None: "not run", True: "passed", False: "FLAGGED"}[v["replay_passed"]],
                "; ".join(v["reasons"]) or "-",
            ]
        )
    metrics = [["scenario", "metric", "better"] + names + [f"ratio vs {names[0]}", "within noise"]]
    for row in comparison.rows:
        ratios = ", ".join("-" if r is None else f"{r:.3f}x" for r in row.ratios[1:]) or "-"
        noise = (
            ", ".join({None: "-", True: "yes", False: "NO"}[f] for f in row.within_noise[1:]) or "-"
        )
        metrics.append(
            [
                row.scenario,
                f"{row.name} ({row.unit})" + (" *" if row.primary else ""),
                row.direction,
                *[_value_text(v) for v in row.values],
                ratios,
                noise,
            ]
        )
    speedups = [
        ["report", "scenario", "metric", "speed-up vs own baseline", "95% interval", "verdict"]
    ]
    for name, r in zip(names, comparison.reports):
        baseline = r["config"].get("baseline")
        for scenario in r["scenarios"]:
            s = scenario.get("speedup")
            if not s:
                continue
            word = "faster" if s["faster"] else "slower" if s["slower"] else "within noise"
            speedups.append(
                [
                    f"{name} (baseline {baseline})",
                    scenario["scenario"],
                    s["metric"],
                    f"{fmt(s['ratio'])}x",
                    f"[{fmt(s['ci'][0])}, {fmt(s['ci'][1])}]",
                    word,
                ]
            )
    return {"validity": validity, "metrics": metrics, "speedups": speedups}


def render_markdown(comparison: Comparison) -> str:
    t = tables(comparison)
    lines = [
        f"# ServeLab compare: {', '.join(comparison.names)}",
        "",
        f"**{comparison.verdict()}**",
        "",
        "## Correctness and validity",
        "",
        _markdown_table(t["validity"]),
        "",
    ]
    if comparison.warnings:
        lines += ["## Environment warnings", ""] + [f"- {w}" for w in comparison.warnings] + [""]
    lines += [
        "## Metrics",
        "",
        _markdown_table(t["metrics"]),
        "",
        f"`*` primary metric. Values with [95% interval]; ratios are oriented so that > 1 is "
        f"better than {comparison.names[0]}; within noise = intervals overlap or the "
        f"difference is under {comparison.noise_floor:.0%}.",
        "",
    ]
    if len(t["speedups"]) > 1:
        lines += [
            "## Speed-up against each report's own same-run baseline",
            "",
            _markdown_table(t["speedups"]),
            "",
        ]
    return "\n".join(lines)


def render_html(comparison: Comparison) -> str:
    t = tables(comparison)
    ok = comparison.all_valid and comparison.primary_within_noise
    parts = [
        f"<h1>ServeLab compare: {html.escape(', '.join(comparison.names))}</h1>",
        f'<p class="{"valid" if ok else "invalid"}">{html.escape(comparison.verdict())}</p>',
        "<h2>Correctness and validity</h2>",
        _html_table(t["validity"]),
    ]
    if comparison.warnings:
        parts.append("<h2>Environment warnings</h2><ul>")
        parts += [f"<li>{html.escape(w)}</li>" for w in comparison.warnings]
        parts.append("</ul>")
    parts += ["<h2>Metrics</h2>", _html_table(t["metrics"])]
    if len(t["speedups"]) > 1:
        parts += [
            "<h2>Speed-up against each report's own baseline</h2>",
            _html_table(t["speedups"]),
        ]
    return page("ServeLab compare", "\n".join(parts))
