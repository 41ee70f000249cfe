"""Markdown and self-contained HTML for bench reports, with inline SVG plots.

No JavaScript and nothing fetched from the network: the HTML page is one file that opens
on an offline machine. Plots: latency CDF per scenario (from the histograms), QPS versus p99
with the SLO line (find-peak steps and server runs), throughput versus concurrency (sweep).
"""

from __future__ import annotations

import html
import math
import re
import shlex
from collections.abc import Sequence
from typing import Any

from lab.bench.histogram import LatencyHistogram

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _p(result: dict[str, Any], key: str) -> Any:
    entry = result.get("latency", {}).get("percentiles", {}).get(key)
    if not entry:
        return None
    value = entry["ms"]
    return value if entry["claimed"] else (f"({fmt(value)})" if value is not None else None)


def scenario_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per scenario (sweep: per concurrency level) for summary tables."""
    header = [
        "scenario", "verdict", "audit", "queries", "p50 ms", "p90 ms", "p99 ms",
        "samples/s", "queue p50 ms", "compute p50 ms", "speed-up",
    ]  # fmt: skip
    rows = [header]

    def row(label: str, r: dict[str, Any], audit: Any) -> list[str]:
        speed = r.get("speedup")
        speed_text = "-"
        if speed:
            speed_text = f"{fmt(speed['ratio'])}x [{fmt(speed['ci'][0])}, {fmt(speed['ci'][1])}]"
            if speed.get("within_noise"):
                speed_text = f"no difference ({speed_text})"
        audit_text = "-" if audit is None else ("pass" if audit["passed"] else "FAIL")
        return [
            label,
            "VALID" if r["validity"]["valid"] else "INVALID",
            audit_text,
            fmt(r.get("queries")),
            fmt(_p(r, "p50")),
            fmt(_p(r, "p90")),
            fmt(_p(r, "p99")),
            fmt(r.get("throughput", {}).get("samples_per_s")),
            fmt(r.get("queue", {}).get("p50_ms")),
            fmt(r.get("compute", {}).get("p50_ms")),
            speed_text,
        ]

    def baseline_row(label: str, baseline: dict[str, Any]) -> list[str]:
        """The baseline's own figures, measured in the same run (not audited)."""
        cells = row(f"{label} (baseline {report['config'].get('baseline')})", baseline, None)
        return cells[:-1] + ["1x (reference)"]

    for s in report["scenarios"]:
        if s["scenario"] == "sweep":
            for level in s["levels"]:
                rows.append(row(f"sweep c={level['concurrency']}", level, level.get("audit")))
                if level.get("baseline"):
                    rows.append(baseline_row(f"sweep c={level['concurrency']}", level["baseline"]))
            continue
        label = s["scenario"]
        if s.get("target_qps") is not None:
            label += f" @ {fmt(s['target_qps'])} qps"
        rows.append(row(label, s, s.get("audit")))
        if s.get("baseline"):
            rows.append(baseline_row(label, s["baseline"]))
    return rows


def _markdown_table(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def summary_table(report: dict[str, Any]) -> str:
    """A plain-text table for the terminal."""
    rows = scenario_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    from lab.bench.headline import headline_lines  # it formats with this module's fmt

    lines = headline_lines(report) + [""] + lines
    v = report["verdict"]
    if v["reasons"]:
        lines += ["", "reasons:"] + [f"  - {reason}" for reason in v["reasons"]]
    if any(cell.startswith("(") for r in rows[1:] for cell in r[4:7]):  # p50, p90, p99
        lines.append("(p values in parentheses were measured on too few queries to be claimed)")
    return "\n".join(lines)


def _first_reason(entry: dict[str, Any]) -> str:
    reasons = entry.get("reasons") or []
    if entry.get("valid"):
        return "met every rule"
    return "; ".join(reasons) if reasons else "INVALID"


def _step_lengths(search: dict[str, Any]) -> str:
    """ "3" or "3-7.2": steps since 1.4 last long enough for their qps (find_peak.py)."""
    lengths = [t.get("duration_s", search["step_s"]) for t in search["steps"]] or [0.0]
    low, high = min(lengths), max(lengths)
    return fmt(low) if high - low < 0.05 else f"{fmt(low)}-{fmt(high)}"


def find_peak_lines(s: dict[str, Any]) -> list[str]:
    """find-peak explained: every search step and every confirming run with its reason."""
    search = s["find_peak"]
    peak, low = s.get("peak_qps"), search["lower_qps"]
    lines = [
        "## find-peak",
        "",
        f"Peak: **{fmt(peak)} qps**. The search ran {len(search['steps'])} steps of "
        f"{_step_lengths(search)} s and bracketed the peak between {fmt(low)} (highest "
        f"VALID step) and {fmt(search['upper_qps'])} qps (lowest INVALID step); full-length "
        "server runs then confirm it, stepping down after each failure.",
        "",
        _markdown_table(
            [["search step", "qps", "valid", "queries", "p50 ms", "p99 ms", "why"]]
            + [
                [
                    str(n),
                    fmt(t["qps"]),
                    fmt(t["valid"]),
                    fmt(t["queries"]),
                    fmt(t["p50_ms"]),
                    fmt(t["p99_ms"]),
                    _first_reason(t),
                ]  # fmt: skip
                for n, t in enumerate(search["steps"], 1)
            ]
        ),
        "",
        _markdown_table(
            [["confirming run", "qps", "valid", "why"]]
            + [
                [str(n), fmt(a["qps"]), fmt(a["valid"]), _first_reason(a)]
                for n, a in enumerate(search.get("final_attempts", []), 1)
            ]
        ),
        "",
    ]
    agreement = search.get("agreement")  # since 1.4
    if agreement is not None and not agreement["agrees"]:
        ratio = agreement["confirmed_over_bracket"]
        share = "no confirmed peak" if ratio is None else f"the confirmed peak is {ratio:.0%}"
        lines += [
            f"The search and the confirming runs disagree by more than "
            f"{agreement['within']:.0%} ({share} of the bracket's lower end): "
            f"{agreement['why']}.",
            "",
        ]
    elif agreement is None and peak is not None and low and peak < 0.8 * low:
        lines += [
            f"The confirmed peak is {peak / low:.0%} of the search's bracket: the "
            f"{fmt(search['step_s'])} s steps were too short to see a queue that keeps "
            "growing over a full-length run (a longer --find-peak-step-s brings them closer).",
            "",
        ]
    lines += [f"Warning: {w}" for w in s["validity"].get("warnings", [])]
    return lines + ([""] if s["validity"].get("warnings") else [])


def _environment_lines(report: dict[str, Any]) -> list[str]:
    env = report["environment"]
    model = report["model"]
    gpu = env["gpu"].get("gpu")
    gpu_text = gpu if isinstance(gpu, str) else ", ".join(d["name"] for d in gpu)
    git = env["git"]
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items())
    commit = (git.get("commit") or "unknown")[:12]
    prov = report.get("provenance") or {}
    dirty = "; ".join(prov.get("dirty_reasons") or []) or "dirty tree"
    lines = [f"- command: `{shlex.join(prov['command'])}`"] if prov.get("command") else []
    for role, source in (prov.get("runners") or {}).items():
        lines.append(
            f"- {role} runner source: {source['kind']} {source.get('path') or source['spec']}, "
            f"sha256 {(source.get('sha256') or '-')[:16]}"
        )
    if prov.get("settings_file"):
        lines.append(
            f"- settings file: {prov['settings_file']['path']} "
            f"(sha256 {prov['settings_file']['sha256'][:16]}; content in the JSON)"
        )
    return lines + [
        f"- CPU: {env['cpu']['model']} ({env['cpu']['logical_cores']} logical cores)",
        f"- GPU: {gpu_text}"
        + (f" (driver {env['gpu']['driver']})" if "driver" in env["gpu"] else ""),
        f"- libraries: {libs}",
        f"- git: {commit}{f' ({dirty})' if git.get('dirty') else ''}",
        f"- model: {model['name']} {model['size']} {model['precision']}, onnx sha256 "
        f"{(model.get('onnx_sha256') or '-')[:16]}, weights sha256 "
        f"{(model.get('weights_sha256') or '-')[:16]}, seed {model['seed']} "
        f"(public {model['public_seed']}), SLO {fmt(report.get('slo_ms'))} ms",
    ]


def _isolation_lines(report: dict[str, Any]) -> list[str]:
    isolation = report.get("isolation")
    if not isolation:
        return []
    text = f"Isolation: **{isolation['mode']}**"
    for key, role in (("worker", "runner"), ("baseline_worker", "baseline")):
        worker = isolation.get(key)
        if worker:
            text += (
                f"; {role} worker pid {worker['pid']}, load {fmt(worker['load_s'])} s, "
                f"{fmt(worker['cpu_s'])} CPU-s in {fmt(worker['wall_s'])} s"
            )
            if worker.get("lost"):
                text += f" ({worker['lost']})"
    seed = report["model"].get("seed_source")
    if seed:
        text += f". Workload seed {report['model']['seed']} ({seed})"
    return [text + ".", ""]


def render_markdown(report: dict[str, Any]) -> str:
    v = report["verdict"]
    config = report["config"]
    from lab.bench.headline import headline_lines

    lines = [
        f"# ServeLab bench: {report['name']}",
        "",
        "## Headline",
        "",
        *[f"- {line.strip()}" for line in headline_lines(report)],
        "- plots: the .html file next to this one",
        "",
        f"**{'VALID' if v['valid'] else 'INVALID'}** — audit "
        f"{_yes_no(v['audit_passed'], 'passed', 'FAILED')}, replay check "
        f"{_yes_no(v['replay_passed'], 'passed', 'FLAGGED')}. Created {report['created_at']}, "
        f"runner `{config['runner']}`"
        + (f", baseline `{config['baseline']}`" if config.get("baseline") else "")
        + f", target `{config['target']}`.",
        "",
    ]
    if v["reasons"]:
        lines += ["Reasons:", ""] + [f"- {r}" for r in v["reasons"]] + [""]
    if v.get("warnings"):
        lines += ["Warnings:", ""] + [f"- {w}" for w in v["warnings"]] + [""]
    lines += _isolation_lines(report)
    lines += ["## Results", "", _markdown_table(scenario_rows(report)), ""]
    lines.append(
        "Latency is measured from each query's scheduled time; p values in parentheses "
        "were measured on too few queries to be claimed (64 for p90, 662 for p99)."
    )
    lines.append("")
    for s in report["scenarios"]:
        if s["scenario"] == "find-peak":
            lines += find_peak_lines(s)
    roofline = report.get("roofline", {})
    lines += ["## Roofline", ""]
    if "skipped" in roofline:
        lines += [f"Skipped: {roofline['skipped']}", ""]
    else:
        work, ceilings = roofline["work"], roofline["ceilings"]
        lines += [
            f"- work: {fmt(work['flops_per_sample'] / 1e6)} MFLOP and "
            f"{fmt(work['bytes_per_sample_at_batch_1'] / 1e6)} MB per sample at batch 1 "
            f"(weights {fmt(work['weight_bytes'] / 1e6)} MB)",
            f"- ceilings ({ceilings['framework']}): {fmt(ceilings['peak_flops_per_s'] / 1e9)} "
            f"GFLOP/s, {fmt(ceilings['peak_bytes_per_s'] / 1e9)} GB/s",
        ]
        for s in report["scenarios"]:
            r = s.get("roofline")
            if r:
                lines.append(
                    f"- {s['scenario']}: {fmt(r['achieved_flops_per_s'] / 1e9)} GFLOP/s achieved "
                    f"= {_pct(r['fraction_of_peak_flops'])} of peak FLOP/s, "
                    f"{_pct(r['fraction_of_roofline'])} of the roofline at batch "
                    f"{fmt(r['batch_size'])} ({r['bound']}-bound, intensity "
                    f"{fmt(r['arithmetic_intensity'])} FLOP/byte)"
                )
        lines.append("")
    replay = report.get("replay")
    if replay is not None:
        lines += [
            "## Replay check (TEST04)",
            "",
            f"Fresh median {fmt(replay.get('fresh_median_ms'))} ms, replayed median "
            f"{fmt(replay.get('replay_median_ms'))} ms, paired ratio {fmt(replay.get('ratio'))}, "
            f"lower bound {fmt(replay.get('lower_bound'))} (flagged when the bound exceeds "
            f"{fmt(1 + replay['tolerance'])} in every pass; "
            f"{len(replay.get('passes') or []) or 1} pass(es)): "
            f"{'FLAGGED' if replay['flagged'] else 'not flagged'}.",
            "",
        ]
    lines += ["## Environment", ""] + _environment_lines(report) + [""]
    return "\n".join(lines)


def _yes_no(value: bool | None, yes: str, no: str) -> str:
    return "not run" if value is None else (yes if value else no)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


# ----- SVG ---------------------------------------------------------------------------------
def _nice_max(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return step * exponent
    return 10 * exponent


def svg_plot(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    x_label: str,
    y_label: str,
    title: str,
    hline: tuple[float, str] | None = None,
    log_x: bool = False,
    log_y: bool = False,
    markers: bool = False,
    width: int = 640,
    height: int = 320,
    y_cap: float | None = None,
    vlines: Sequence[tuple[float, str]] = (),
) -> str:
    """A line plot as an inline <svg> element; with `y_cap`, larger values are drawn at
    the top edge (and the title says so); `vlines` are labelled vertical marks; `log_x` /
    `log_y` put an axis on a log scale (decade ticks; values <= 0 are left out)."""
    left, right, top, bottom = 64, 16, 28, 44
    series = [(name, [(x, y) for x, y in pts if not log_y or y > 0]) for name, pts in series]
    points = [p for _, pts in series for p in pts]
    xs = [x for x, _ in points if not log_x or x > 0]
    xs += [x for x, _ in vlines if xs and (not log_x or x > 0)]
    ys = [y for _, y in points]
    if hline is not None and (not log_y or hline[0] > 0):
        ys.append(hline[0])
    if not xs:
        return f"<p>{html.escape(title)}: no data</p>"

    def tx(x: float) -> float:
        return math.log10(x) if log_x else x

    x_lo = min(tx(x) for x in xs)
    x_hi = max(tx(x) for x in xs)
    if log_x:
        x_lo, x_hi = math.floor(x_lo), math.ceil(x_hi)
    else:
        x_lo, x_hi = 0.0, _nice_max(x_hi)
    if x_hi <= x_lo:
        x_hi = x_lo + 1
    y_hi = _nice_max(max(ys) if ys else 1.0)
    y_lo = 0.0
    if log_y:
        y_lo = float(math.floor(math.log10(min(ys)))) if ys else 0.0
        y_hi = float(math.ceil(math.log10(max(ys)))) if ys else 1.0
        y_hi = y_hi if y_hi > y_lo else y_lo + 1
    elif y_cap is not None and y_hi > y_cap:
        y_hi = _nice_max(y_cap)
        title += f" (values above {fmt(y_hi)} drawn at the top)"
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (tx(x) - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        if log_y:
            return top + plot_h - (math.log10(y) - y_lo) / (y_hi - y_lo) * plot_h
        return top + plot_h - (min(y, y_hi) / y_hi) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    y_ticks = (
        [10.0**e for e in range(int(y_lo), int(y_hi) + 1)]
        if log_y
        else [y_hi * i / 5 for i in range(6)]
    )
    for y in y_ticks:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>'
            f'<text x="{left - 4}" y="{py(y) + 4:.1f}" text-anchor="end">{fmt(y)}</text>'
        )
    ticks = (
        [10.0**e for e in range(int(x_lo), int(x_hi) + 1)]
        if log_x
        else [x_lo + (x_hi - x_lo) * i / 5 for i in range(6)]
    )
    for x in ticks:
        parts.append(
            f'<text x="{px(x):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{fmt(x)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    if hline is not None and (not log_y or hline[0] > 0):
        y, label = hline
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            f'stroke="#000" stroke-dasharray="6 4"/>'
            f'<text x="{left + plot_w - 4}" y="{py(y) - 4:.1f}" text-anchor="end">{html.escape(label)}</text>'
        )
    for n, (x, label) in enumerate(vlines):
        if log_x and x <= 0:
            continue
        parts.append(
            f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{top + plot_h}" '
            f'stroke="#555" stroke-dasharray="3 3"/>'
            f'<text x="{px(x) + 3:.1f}" y="{top + plot_h - 6 - 12 * (n % 4)}">'
            f"{html.escape(label)}</text>"
        )
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        usable = [(x, y) for x, y in pts if not log_x or x > 0]
        if not usable:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in usable)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{path}"/>')
        if markers:
            parts += [
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>'
                for x, y in usable
            ]
        parts.append(
            f'<text x="{left + 8}" y="{top + 14 + 14 * i}" fill="{color}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def latency_cdf_plots(report: dict[str, Any]) -> list[str]:
    """One latency CDF per scenario (a sweep's levels share one), on a log axis, with the
    p50/p90/p99 of each curve and the SLO marked: offline's seconds and single-stream's
    milliseconds never share an axis."""
    plots = []
    slo = report.get("slo_ms")
    for s in report["scenarios"]:
        entries = s["levels"] if s["scenario"] == "sweep" else [s]
        series, marks = [], []
        for entry in entries:
            if not entry.get("histogram") or not entry["histogram"]["count"]:
                continue
            hist = LatencyHistogram.from_dict(entry["histogram"])
            label = s["scenario"] if "concurrency" not in entry else f"c={entry['concurrency']}"
            if (entry.get("baseline") or {}).get("histogram"):
                label += " (candidate)"
            series.append((label, [(ns / 1e6, c) for ns, c in hist.cdf(200)]))
            if len(entries) == 1:
                marks += [(hist.percentile_ns(q) / 1e6, f"p{q:g}") for q in (50.0, 90.0, 99.0)]
            baseline = (entry.get("baseline") or {}).get("histogram")
            if baseline and baseline["count"]:  # reports since 1.4 keep it
                base = LatencyHistogram.from_dict(baseline)
                name = report["config"].get("baseline") or "baseline"
                series.append((f"baseline {name}", [(ns / 1e6, c) for ns, c in base.cdf(200)]))
        if not series:
            continue
        if slo:
            marks.append((float(slo), f"SLO {fmt(slo)} ms"))
        plots.append(
            svg_plot(
                series,
                "latency (ms, log scale)",
                "fraction of queries",
                f"{s['scenario']}: latency CDF",
                log_x=True,
                vlines=marks,
            )
        )
    return plots


def qps_plot(report: dict[str, Any]) -> str | None:
    steps: list[tuple[float, float]] = []
    finals: list[tuple[float, float]] = []
    for s in report["scenarios"]:
        if s["scenario"] == "find-peak":
            steps += [(t["qps"], t["p99_ms"]) for t in s["find_peak"]["steps"] if t["p99_ms"]]
        if s["scenario"] in ("server", "find-peak"):
            p99 = s["latency"]["percentiles"]["p99"]["ms"]
            if p99 is not None:
                finals.append((s["target_qps"], p99))
    if not steps and not finals:
        return None
    series = []
    if steps:
        series.append(("find-peak steps", sorted(steps)))
    if finals:
        series.append(("full server runs", sorted(finals)))
    slo = report.get("slo_ms")
    qps = [x for x, _ in steps + finals if x > 0]
    p99 = [y for _, y in steps + finals if y > 0] + ([slo] if slo else [])
    log_x = bool(qps) and max(qps) >= 10 * min(qps)  # values span a decade or more
    log_y = bool(p99) and max(p99) >= 10 * min(p99)
    return svg_plot(
        series,
        "target QPS" + (" (log scale)" if log_x else ""),
        "p99 latency (ms" + (", log scale)" if log_y else ")"),
        "QPS versus p99 latency",
        hline=(slo, f"SLO {fmt(slo)} ms") if slo else None,
        markers=True,
        y_cap=None if log_y else (4 * slo if slo else None),
        log_x=log_x,
        log_y=log_y,
    )


TELEMETRY_SERIES = {
    "process_cpu_percent": "harness + workers CPU (% of one core)",
    "system_cpu_percent": "whole machine CPU (% of all cores)",
    "gpu_utilization_percent": "GPU utilisation (%)",
}


def telemetry_parts(report: dict[str, Any]) -> list[str]:
    """Telemetry in the HTML: a table per scenario (CPU, memory, GPU) and, where the report
    keeps samples over time (1.4), a small CPU/GPU plot of each scenario."""
    rows = [["scenario", "CPU mean / max (% of a core)", "machine CPU mean", "other processes (cores)",
             "RSS max (MB)", "GPU", "GPU util mean / max", "GPU memory max (MB)"]]  # fmt: skip
    plots = []
    for s in report["scenarios"]:
        t = s.get("telemetry")
        if not t:
            continue
        gpu = t.get("gpu_metrics") or {}
        util, memory = gpu.get("utilization_percent"), gpu.get("memory_used_bytes")
        rows.append(
            [
                s["scenario"],
                f"{fmt(t.get('process_cpu_percent_mean'))} / {fmt(t.get('process_cpu_percent_max'))}",
                f"{fmt(t.get('system_cpu_percent_mean'))}%",
                fmt(t.get("other_processes_cpu_cores_mean")),
                fmt((t.get("process_rss_bytes_max") or 0) / 1e6),
                str(t.get("gpu")),
                f"{fmt(util['mean'])} / {fmt(util['max'])}%" if util else "-",
                fmt(memory["max"] / 1e6) if memory else "-",
            ]
        )
        series = t.get("series") or {}
        times = series.get("t_s") or []
        lines = [
            (label, list(zip(times, series[key])))
            for key, label in TELEMETRY_SERIES.items()
            if series.get(key)
        ]
        if len(times) > 1 and lines:
            plots.append(
                svg_plot(
                    lines,
                    "time (s)",
                    "percent",
                    f"{s['scenario']}: CPU and GPU over time",
                    markers=len(times) < 8,
                    width=480,
                    height=220,
                )  # fmt: skip
            )
    if len(rows) == 1:
        return []
    return ["<h2>Telemetry</h2>", _html_table(rows), *plots]


def concurrency_plot(report: dict[str, Any]) -> str | None:
    for s in report["scenarios"]:
        if s["scenario"] == "sweep":
            points = [
                (lvl["concurrency"], lvl["throughput"]["samples_per_s"]) for lvl in s["levels"]
            ]
            return svg_plot(
                [("throughput", points)],
                "concurrency",
                "samples/s",
                "Throughput versus concurrency",
                markers=True,
            )
    return None


def _html_table(rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.valid { color: #1a7f37; font-weight: bold; } .invalid { color: #b42318; font-weight: bold; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; }
"""


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def render_html(report: dict[str, Any]) -> str:
    v = report["verdict"]
    status = "VALID" if v["valid"] else "INVALID"
    from lab.bench.headline import headline_lines

    headline = headline_lines(report)
    parts = [
        f"<h1>ServeLab bench: {html.escape(report['name'])}</h1>",
        f'<p class="{status.lower()}">{html.escape(headline[0].removeprefix("verdict: "))}</p>',
        '<ul class="headline">'
        + "".join(f"<li>{html.escape(line.strip())}</li>" for line in headline[1:])
        + "</ul>",
    ]
    if v["reasons"]:
        parts.append("<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in v["reasons"]) + "</ul>")
    parts.append(_html_table(scenario_rows(report)))
    parts += latency_cdf_plots(report)
    for plot in (qps_plot(report), concurrency_plot(report)):
        if plot:
            parts.append(plot)
    parts += telemetry_parts(report)
    from lab.bench.markdown_html import markdown_to_html

    markdown = render_markdown(report)
    # Everything after the title and the headline (shown above), one heading level down.
    start = markdown.find("\n\n", markdown.find("## Headline\n\n") + len("## Headline\n\n"))
    details = re.sub(r"^## ", "### ", markdown[start:], flags=re.MULTILINE)
    parts.append("<h2>Details</h2>" + markdown_to_html(details))
    return page(f"ServeLab bench {report['name']}", "\n".join(parts))
