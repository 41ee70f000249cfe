"""The headline a report opens with, in every format: what a reader decides from.

verdict     VALID or INVALID, and every rule with "satisfied: yes/no" (MLPerf's summary
            prints each one even when the run is VALID): per scenario, then the audit
            and the replay check
primary     each scenario's primary metric with its interval, the SLO beside latencies,
            and the speed-up against the same-run baseline (or "no difference")
"""

from __future__ import annotations

from typing import Any

from lab.bench.render import fmt


def _yes(flag: bool | None) -> str:
    return {None: "not run", True: "yes", False: "NO"}[flag]


def _primary(scenario: dict[str, Any], slo_ms: float | None) -> str:
    primary = next((m for m in scenario.get("metrics", []) if m["primary"]), None)
    if primary is None or primary["value"] is None:
        return "-"
    text = f"{primary['name']} {fmt(primary['value'])} {primary['unit']}"
    if primary.get("ci"):
        text += f" [{fmt(primary['ci'][0])}, {fmt(primary['ci'][1])}]"
    if primary["unit"] == "ms" and slo_ms is not None:
        text += f" (SLO {fmt(slo_ms)} ms on server p99)"
    return text


def _speedup(scenario: dict[str, Any], baseline: str | None) -> str | None:
    s = scenario.get("speedup")
    if not s:
        return None
    interval = f"{fmt(s['ratio'])}x [{fmt(s['ci'][0])}, {fmt(s['ci'][1])}]"
    if s["faster"]:
        word = "faster"
    elif s["slower"]:
        word = "slower"
    else:
        word = "no difference"
    floor = f", noise floor {s['noise_floor']:.0%}" if "noise_floor" in s else ""
    return f"vs {baseline}: {word}, {interval} on {s['metric']}{floor}"


def headline_lines(report: dict[str, Any]) -> list[str]:
    """Plain lines (Markdown-safe) for the top of every report format."""
    v = report["verdict"]
    lines = [f"verdict: {'VALID' if v['valid'] else 'INVALID'}"]
    partial = report.get("partial")
    if partial:
        lines[0] += " (PARTIAL REPORT)"
        lines.append(
            f"partial: stopped during {partial['stopped_at']} ({partial['reason']}); "
            f"not run: {', '.join(partial['not_run']) or 'nothing'}"
        )
    baseline = report["config"].get("baseline")
    for scenario in report["scenarios"]:
        line = f"{scenario['scenario']}: {_primary(scenario, report.get('slo_ms'))}"
        speed = _speedup(scenario, baseline)
        if speed:
            line += f"; {speed}"
        lines.append(line)
        rules = dict(scenario["validity"].get("rules") or {})
        audit = scenario.get("audit")
        rules["audit"] = None if audit is None else bool(audit["passed"])
        satisfied = ", ".join(f"{name} {_yes(ok)}" for name, ok in rules.items())
        lines.append(f"  satisfied: {satisfied}")
    lines.append(f"replay check (caching) satisfied: {_yes(v['replay_passed'])}")
    return lines
