"""`servelab compare` over grade reports: candidates side by side, ranked by score.

First what decides: rank, verdict, score with its interval, the speed-up over the baseline
with its interval and the SLO; a ZERO or NOT SCORED report is ranked below every score and
keeps its reason. Scores are normalised against the baseline (0) and the reference (1)
measured in each grade's own run, so grades from different machines line up; reports of
different exercises are refused.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.grading.report import KIND, fmt_ratio, fmt_score, load_grade_report


def is_grade_report(path: str) -> bool:
    """Cheap sniff: a JSON object whose kind is a grade report."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == KIND


def _rank_key(report: Mapping[str, Any]) -> tuple[int, float]:
    value = report["score"].get("value")
    if report["verdict"] == "SCORED" and value is not None:
        return (0, -float(value))
    return (1 if report["verdict"] == "ZERO" else 2, 0.0)


def ranked(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    exercises = sorted({r["exercise"]["name"] for r in reports})
    if len(exercises) > 1:
        raise ConfigError(f"grade reports of different exercises: {', '.join(exercises)}")
    return sorted(reports, key=_rank_key)


def render_candidates(reports: Sequence[dict[str, Any]]) -> str:
    order = ranked(reports)
    exercise = order[0]["exercise"]
    lines = [
        f"# Candidates: {exercise['name']} ({exercise['role']})",
        "",
        "Ranked by the normalised score (baseline 0, reference 1, measured in each grade's own",
        "run). ZERO: a gate failed (verify, audit, replay check, INVALID run); NOT SCORED: the",
        "run gave no scale to score on.",
        "",
        "| rank | candidate | verdict | score [95% interval] | speed-up vs baseline | reference speed-up | SLO | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank, report in enumerate(order, 1):
        auto = report["automatic"]
        candidate, reference = auto.get("candidate_leg") or {}, auto.get("reference_leg") or {}
        slo = auto.get("slo") or {}
        slo_text = "-"
        if slo.get("measured"):
            slo_text = f"{'met' if slo['compliant'] else 'MISSED'} at {slo['qps'] or 0:.3g} qps"
        score = report["score"]
        text = (
            fmt_score(score)
            if score.get("value") is not None and not score.get("zeroed")
            else ("0" if score.get("zeroed") else "none")
        )
        reason = score.get("reason") or ""
        lines.append(
            f"| {rank} | {report['submission']['name']} | {report['verdict']} | {text} | "
            f"{fmt_ratio(candidate.get('speedup'))} | {fmt_ratio(reference.get('speedup'))} | "
            f"{slo_text} | {reason.replace('|', '/')} |"
        )
    lines += ["", "Rubric levels filled in so far:", ""]
    for report in order:
        filled = [
            f"{r['dimension']} {r['level']}" for r in report["rubric"] if r.get("level") is not None
        ]
        lines.append(f"- {report['submission']['name']}: {', '.join(filled) or 'none yet'}")
    return "\n".join(lines) + "\n"


def compare_grades(args: argparse.Namespace) -> int:
    """The `servelab compare` entry for grade reports (lab.cli dispatches here)."""
    reports = [load_grade_report(path) for path in args.reports]
    markdown = render_candidates(reports)
    if getattr(args, "output", None):
        Path(args.output).write_text(markdown)
        print(f"wrote {args.output}")
    else:
        print(markdown, end="")
    if getattr(args, "html", None):
        from lab.bench.markdown_html import markdown_to_html
        from lab.bench.render import page

        title = f"ServeLab candidates: {reports[0]['exercise']['name']}"
        Path(args.html).write_text(page(title, markdown_to_html(markdown)))
        print(f"wrote {args.html}")
    return 0


def dispatch_compare(args: argparse.Namespace) -> None:
    """When every input of `servelab compare` is a grade report, use the candidate view;
    a mix of grade and bench reports is refused."""
    grades = [is_grade_report(path) for path in args.reports]
    if all(grades):
        args.func = compare_grades
    elif any(grades):
        raise ConfigError("compare takes either bench reports or grade reports, not both")
