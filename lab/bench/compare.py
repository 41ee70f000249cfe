"""`servelab compare A.json B.json ...`: reports side by side.

Reports of different models, sizes or precisions are refused (exit 2) unless --force.
Order of the output: correctness and validity first (a fast invalid run is not a result),
then the decision (for each primary metric: which report is better, by what ratio, its
interval, beyond noise or not), then the configuration differences that change results and
the environment differences (lab.bench.differences), then every metric with its declared
direction, its 95% interval, the ratio against the first report (oriented so that > 1 is
better) and a "within noise" flag, then each report's speed-up against its own same-run
baseline, which is the number to compare across machines.

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

from lab.bench.differences import (
    check_comparable,
    configuration_differences,
    environment_warnings,
)
from lab.bench.render import _html_table, _markdown_table, fmt, page
from lab.bench.report import load_report

NOISE_FLOOR = 0.10


@dataclass
class MetricRow:
    scenario: str
    name: str
    unit: str
    direction: str
    primary: bool
    values: list[dict[str, Any] | None]  # per report: the metric entry or None
    ratios: list[float | None] = field(default_factory=list)  # vs report 0, > 1 better
    ratio_cis: list[tuple[float, float] | None] = field(default_factory=list)
    within_noise: list[bool | None] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    """One primary metric, report 0 against one other report."""

    scenario: str
    metric: str
    better: str  # the better report's name (by the point estimate)
    worse: str
    factor: float  # how much better, >= 1
    interval: tuple[float, float] | None  # of `factor`, from the two 95% intervals
    beyond_noise: bool

    def text(self) -> str:
        ci = "" if self.interval is None else f" [{self.interval[0]:.2f}, {self.interval[1]:.2f}]"
        if not self.beyond_noise:
            return f"{self.scenario} {self.metric}: no difference beyond noise ({self.factor:.2f}x{ci})"
        return (
            f"{self.scenario} {self.metric}: {self.better} is better than {self.worse}, "
            f"{self.factor:.2f}x{ci}"
        )


@dataclass
class Comparison:
    names: list[str]
    reports: list[dict[str, Any]]
    warnings: list[str]
    rows: list[MetricRow]
    noise_floor: float
    differences: list[str] = field(default_factory=list)  # configuration that changes results

    def decisions(self) -> list[Decision]:
        found = []
        for row in self.rows:
            if not row.primary:
                continue
            for i in range(1, len(self.names)):
                ratio, ci, same = row.ratios[i], row.ratio_cis[i], row.within_noise[i]
                if ratio is None or same is None:
                    continue
                flipped = ratio < 1
                found.append(
                    Decision(
                        row.scenario,
                        row.name,
                        self.names[0] if flipped else self.names[i],
                        self.names[i] if flipped else self.names[0],
                        1 / ratio if flipped else ratio,
                        None if ci is None else ((1 / ci[1], 1 / ci[0]) if flipped else ci),
                        not same,
                    )
                )
        return found

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
        differing = [d.text() for d in self.decisions() if d.beyond_noise]
        if not differing:
            return "no primary metric appears in more than one report"
        return f"differs beyond noise: {'; '.join(differing)}"


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


def _ratio_interval(
    first: dict[str, Any], other: dict[str, Any], direction: str
) -> tuple[float, float] | None:
    """The ratio's range over both 95% intervals (conservative), oriented like `_ratio`."""
    ia, ib = _interval(first), _interval(other)
    if ia is None or ib is None or min(ia[0], ib[0]) <= 0:
        return None
    if direction == "higher":
        return ib[0] / ia[1], ib[1] / ia[0]
    return ia[0] / ib[1], ia[1] / ib[0]


def compare_reports(
    reports: Sequence[dict[str, Any]],
    names: Sequence[str],
    noise_floor: float = NOISE_FLOOR,
    force: bool = False,
) -> Comparison:
    """Raises ConfigError for different models, sizes or precisions unless `force`."""
    forced = check_comparable(reports, names, force)
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
                row.ratio_cis.append(None)
                row.within_noise.append(None)
                continue
            row.ratios.append(_ratio(first, value, row.direction))
            row.ratio_cis.append(_ratio_interval(first, value, row.direction))
            row.within_noise.append(same_within_noise(first, value, noise_floor))
    return Comparison(
        list(names),
        list(reports),
        forced + environment_warnings(reports, names),
        list(rows.values()),
        noise_floor,
        configuration_differences(reports, names),
    )


def load_and_compare(
    paths: Sequence[Path | str], noise_floor: float = NOISE_FLOOR, force: bool = False
) -> Comparison:
    reports = [load_report(p) for p in paths]
    names = _short_names([Path(p) for p in paths])
    return compare_reports(reports, names, noise_floor, force)


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
            word = "faster" if s["faster"] else "slower" if s["slower"] else "no difference"
            if "noise_floor" in s:
                word += f" (noise floor {s['noise_floor']:.0%})"
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
    decision = [
        ["scenario", "primary metric", "better", "worse", "by", "95% interval", "beyond noise"]
    ]
    for d in comparison.decisions():
        ci = "-" if d.interval is None else f"[{d.interval[0]:.2f}, {d.interval[1]:.2f}]"
        decision.append(
            [
                d.scenario,
                d.metric,
                d.better if d.beyond_noise else "no difference",
                d.worse if d.beyond_noise else "-",
                f"{d.factor:.2f}x",
                ci,
                "yes" if d.beyond_noise else "no",
            ]
        )
    return {
        "validity": validity,
        "decision": decision,
        "metrics": metrics,
        "speedups": speedups,
    }


def candidate_ranking(comparison: Comparison) -> Any:
    """The candidate view of the compared reports (lab.bench.candidates)."""
    from lab.bench.candidates import from_bench_report, rank_candidates

    return rank_candidates(
        [from_bench_report(n, r) for n, r in zip(comparison.names, comparison.reports)],
        comparison.noise_floor,
    )


def render_markdown(comparison: Comparison, candidates: bool | None = None) -> str:
    """With `candidates` (default: more than two reports), the ranked candidate view
    comes first."""
    from lab.bench.candidates import render_candidates_markdown

    t = tables(comparison)
    lines = [f"# ServeLab compare: {', '.join(comparison.names)}", ""]
    if candidates if candidates is not None else len(comparison.names) > 2:
        lines.append(
            render_candidates_markdown(candidate_ranking(comparison), "Candidates (ranked)")
        )
        lines.append(f"Against the first report, {comparison.names[0]}:")
        lines.append("")
    lines += [
        f"**{comparison.verdict()}**",
        "",
        "## Correctness and validity",
        "",
        _markdown_table(t["validity"]),
        "",
    ]
    if len(t["decision"]) > 1:
        lines += ["## Decision (primary metrics)", "", _markdown_table(t["decision"]), ""]
    if comparison.differences:
        lines += ["## Configuration differences (they change results)", ""]
        lines += [f"- {d}" for d in comparison.differences] + [""]
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


def render_html(comparison: Comparison, candidates: bool | None = None) -> str:
    from lab.bench.candidates import candidate_rows, legend

    t = tables(comparison)
    ok = comparison.all_valid and comparison.primary_within_noise
    parts = [f"<h1>ServeLab compare: {html.escape(', '.join(comparison.names))}</h1>"]
    if candidates if candidates is not None else len(comparison.names) > 2:
        ranking = candidate_ranking(comparison)
        parts += [
            "<h2>Candidates (ranked)</h2>",
            _html_table(candidate_rows(ranking)),
            f"<p>{html.escape(legend(ranking))}</p>",
            f"<h2>Against the first report, {html.escape(comparison.names[0])}</h2>",
        ]
    parts += [
        f'<p class="{"valid" if ok else "invalid"}">{html.escape(comparison.verdict())}</p>',
        "<h2>Correctness and validity</h2>",
        _html_table(t["validity"]),
    ]
    if len(t["decision"]) > 1:
        parts += ["<h2>Decision (primary metrics)</h2>", _html_table(t["decision"])]
    if comparison.differences:
        parts.append("<h2>Configuration differences (they change results)</h2><ul>")
        parts += [f"<li>{html.escape(d)}</li>" for d in comparison.differences]
        parts.append("</ul>")
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
