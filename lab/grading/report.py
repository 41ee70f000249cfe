"""The grade report: versioned JSON (the record) and Markdown (for the interviewer).

schema_version   "MAJOR.MINOR"; readers accept the same MAJOR
kind             "servelab-grade-report"
created_at, servelab_version, environment (CPU, libraries, git; lab.bench.environment)
exercise         name, title, role, kind, time_box, skills, method, what is scored
profile          the scoring profile (speed exercises) or null
secret_seed      whether SERVELAB_SECRET_SEED was set (its value is never written)
submission       name, path, runner spec and options, every file's sha256
verdict          "SCORED" | "ZERO" (a gate failed) | "NOT SCORED" (no scale to score on)
score            {"value", "ci", "zeroed", "reason"}: baseline 0, reference 1
automatic        method-specific: verify, candidate_leg, reference_leg (each with its bench
                 report path, samples/s, speed-up with interval, validity), slo; or
                 the file checks; or the hidden checks
rubric           one entry per dimension: question, anchored levels, level (null until
                 the interviewer fills it in), evidence
notes_md         the candidate's NOTES.md, quoted (or null)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.grading.catalogue import Exercise
from lab.grading.grade import NOTES_LIMIT_CHARS, Submission
from lab.grading.rubric import rubric_markdown, rubric_sheet

SCHEMA_VERSION = "1.0"
KIND = "servelab-grade-report"


def verdict_of(score: Mapping[str, Any]) -> str:
    if score.get("zeroed"):
        return "ZERO"
    return "NOT SCORED" if score.get("value") is None else "SCORED"


def build_report(
    exercise: Exercise,
    submission: Submission,
    automatic: dict[str, Any],
    profile: str | None,
    secret_seed: bool,
) -> dict[str, Any]:
    from lab import __version__
    from lab.bench.environment import fingerprint

    score = automatic.pop("score")
    notes = submission.notes
    if notes is not None and len(notes) > NOTES_LIMIT_CHARS:
        notes = notes[:NOTES_LIMIT_CHARS] + "\n[... cut: NOTES.md is longer]"
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "servelab_version": __version__,
        "environment": fingerprint(),
        "exercise": {
            "name": exercise.name,
            "title": exercise.title,
            "role": exercise.role,
            "kind": exercise.kind,
            "time_box": exercise.time_box,
            "skills": list(exercise.skills),
            "method": exercise.method,
            "what": exercise.scoring["what"].strip(),
        },
        "profile": profile,
        "secret_seed": secret_seed,
        "submission": submission.describe(),
        "verdict": verdict_of(score),
        "score": score,
        "automatic": automatic,
        "rubric": rubric_sheet(exercise.rubric),
        "notes_md": notes,
    }


def check_grade_report(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise ConfigError(f"{where} is not a servelab grade report")
    version = str(data.get("schema_version", ""))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ConfigError(
            f"{where} has schema_version {version or 'none'}; this servelab reads {SCHEMA_VERSION.split('.')[0]}.x"
        )
    for key in ("exercise", "submission", "verdict", "score", "automatic", "rubric"):
        if key not in data:
            raise ConfigError(f"{where}: grade report without {key}")
    return data


def load_grade_report(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no grade report at {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return check_grade_report(data, str(path))


def fmt_ratio(speed: Mapping[str, Any] | None) -> str:
    if not speed:
        return "-"
    ci = speed.get("ci") or [None, None]
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else ""
    return f"{speed['ratio']:.2f}x{interval}"


def fmt_score(score: Mapping[str, Any]) -> str:
    if score.get("zeroed"):
        return f"0 (ZERO: {score['reason']})"
    if score.get("value") is None:
        return f"none (NOT SCORED: {score['reason']})"
    ci = score.get("ci")
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return f"{score['value']:.2f}{interval}"


def headline(report: Mapping[str, Any]) -> list[str]:
    """The lines a reader decides from: verdict, score, speed-ups, SLO."""
    lines = [f"verdict: {report['verdict']}", f"score: {fmt_score(report['score'])}"]
    auto = report["automatic"]
    if report["exercise"]["method"] == "speed":
        candidate, reference = auto.get("candidate_leg"), auto.get("reference_leg")
        if candidate:
            lines.append(
                f"candidate speed-up over the baseline: {fmt_ratio(candidate['speedup'])} "
                f"({_rate(candidate['samples_per_s'])} vs {_rate(candidate['baseline_samples_per_s'])} samples/s)"
            )
        if reference:
            lines.append(
                f"reference speed-up over the baseline: {fmt_ratio(reference['speedup'])} "
                f"({_rate(reference['samples_per_s'])} vs {_rate(reference['baseline_samples_per_s'])} samples/s)"
            )
        slo = auto.get("slo") or {}
        if slo.get("measured"):
            lines.append(
                f"SLO: {'met' if slo['compliant'] else 'MISSED'} at {_rate(slo['qps'])} qps "
                f"({slo['scenario']}), p99 {_rate(slo['p99_ms'])} ms vs {_rate(slo['slo_ms'])} ms"
            )
        else:
            lines.append(f"SLO: not measured ({slo.get('why', '-')})")
    return lines


def _rate(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3g}"


def render_markdown(report: Mapping[str, Any]) -> str:
    ex, sub = report["exercise"], report["submission"]
    out = [
        f"# Grade: {sub['name']} on {ex['name']}",
        "",
        f"{ex['title']} ({ex['role']}, {ex['kind']}, {ex['time_box']}); graded "
        f"{report['created_at']}, profile {report['profile'] or '-'}, "
        f"secret seed {'set' if report['secret_seed'] else 'NOT set (fresh seeds per leg)'}.",
        "",
        *[f"- {line}" for line in headline(report)],
        "",
        "## Automatic part",
        "",
        ex["what"],
        "",
    ]
    auto = report["automatic"]
    if ex["method"] == "speed":
        verify = auto.get("verify") or {}
        out.append(f"- verify (isolated worker): {'PASS' if verify.get('passed') else 'FAIL'}")
        for role in ("candidate_leg", "reference_leg"):
            leg = auto.get(role)
            if leg:
                state = "VALID" if leg["valid"] else "INVALID: " + "; ".join(leg["reasons"])
                out.append(f"- {role.replace('_', ' ')}: {state}; bench report {leg['report']}")
    for check in auto.get("checks", []):
        if isinstance(check, Mapping):
            mark = "pass" if check["passed"] else "FAIL: " + "; ".join(check["problems"])
            out.append(f"- {check['name']}: {mark}")
        else:
            out.append(f"- {check}")
    out += ["", "## Rubric (the interviewer fills this in)", "", *rubric_markdown(report["rubric"])]
    out += ["## The candidate's NOTES.md", ""]
    notes = report.get("notes_md")
    out += (
        [f"> {line}" if line else ">" for line in notes.splitlines()]
        if notes
        else ["(no NOTES.md handed in)"]
    )
    return "\n".join(out) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "grade"


def write_grade_report(report: Mapping[str, Any], directory: Path) -> dict[str, Path]:
    from lab.bench.report import jsonable

    directory.mkdir(parents=True, exist_ok=True)
    stamp = report["created_at"].replace(":", "").replace("-", "").replace("+0000", "Z")
    base = _slug(f"{stamp}-{report['exercise']['name']}-{report['submission']['name']}")
    paths = {".json": directory / f"{base}.grade.json", ".md": directory / f"{base}.grade.md"}
    paths[".json"].write_text(json.dumps(jsonable(dict(report)), indent=1, allow_nan=False) + "\n")
    paths[".md"].write_text(render_markdown(report))
    return paths
