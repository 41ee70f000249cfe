"""The candidate view: N reports side by side, one row per candidate, ranked.

Verdicts first (an INVALID run is not a result: it ranks after every VALID one whatever its
numbers, and takes its places in each metric after them too), then each primary metric with its 95% interval and its place among the
candidates, marked when it is within noise of the best (intervals overlap or the
difference is under the noise floor, as in lab.bench.compare).

Rank: VALID before INVALID, then by the mean of the per-metric places (1 = best; a metric a
candidate lacks counts as last), ties in the order given. Plain and explainable rather than
a weighted score: a reader sees each place it came from.

`Candidate` is plain data (name, verdict, metric entries) so that other views (grading) can
build candidates from their own records and reuse `rank_candidates` and the renderers;
`from_bench_report` builds one from a bench report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.bench.compare import NOISE_FLOOR, same_within_noise
from lab.bench.render import _markdown_table, fmt


@dataclass(frozen=True)
class Candidate:
    name: str
    valid: bool
    verdict: str  # one line: "VALID", or "INVALID: <first reason>"
    # primary metrics: {"scenario", "name", "value", "unit", "direction", "ci"}
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Column:
    scenario: str
    name: str
    unit: str
    direction: str  # "lower" or "higher" is better

    @property
    def label(self) -> str:
        return f"{self.scenario} {self.name} ({self.unit}, {self.direction} is better)"


@dataclass
class Ranking:
    candidates: list[Candidate]  # best first
    columns: list[Column]
    places: list[list[int | None]]  # per candidate (ranked order), per column: 1 = best
    near_best: list[list[bool | None]]  # within noise of that column's best
    mean_places: list[float]
    noise_floor: float


def from_bench_report(name: str, report: dict[str, Any]) -> Candidate:
    """A candidate from a bench report: its verdict and every scenario's primary metric."""
    verdict = report["verdict"]
    text = "VALID" if verdict["valid"] else "INVALID"
    if verdict["reasons"]:
        text += f": {verdict['reasons'][0]}"
        if len(verdict["reasons"]) > 1:
            text += f" (+{len(verdict['reasons']) - 1} more)"
    metrics = [
        {**m, "scenario": s["scenario"]}
        for s in report["scenarios"]
        for m in s.get("metrics", [])
        if m["primary"]
    ]
    return Candidate(name, bool(verdict["valid"]), text, metrics)


def _entry(candidate: Candidate, column: Column) -> dict[str, Any] | None:
    for m in candidate.metrics:
        if (m["scenario"], m["name"]) == (column.scenario, column.name):
            return m if m.get("value") is not None else None
    return None


def rank_candidates(candidates: Sequence[Candidate], noise_floor: float = NOISE_FLOOR) -> Ranking:
    columns: list[Column] = []
    for c in candidates:
        for m in c.metrics:
            column = Column(m["scenario"], m["name"], m["unit"], m["direction"])
            if all((k.scenario, k.name) != (column.scenario, column.name) for k in columns):
                columns.append(column)
    n = len(candidates)
    places: list[list[int | None]] = [[None] * len(columns) for _ in candidates]
    near: list[list[bool | None]] = [[None] * len(columns) for _ in candidates]
    for j, column in enumerate(columns):
        entries = [_entry(c, column) for c in candidates]
        present = [i for i, e in enumerate(entries) if e is not None]
        sign = 1.0 if column.direction == "lower" else -1.0
        ordered = sorted(  # an INVALID run's figure never takes a place before a VALID one
            present,
            key=lambda i: (not candidates[i].valid, sign * float(entries[i]["value"])),  # type: ignore[index]
        )
        for place, i in enumerate(ordered, start=1):
            places[i][j] = place
            best = entries[ordered[0]]
            assert best is not None and entries[i] is not None
            near[i][j] = same_within_noise(best, entries[i], noise_floor)  # type: ignore[arg-type]
    means = [
        sum(p if p is not None else n for p in places[i]) / len(columns) if columns else 0.0
        for i in range(n)
    ]
    order = sorted(range(n), key=lambda i: (not candidates[i].valid, means[i], i))
    return Ranking(
        [candidates[i] for i in order],
        columns,
        [places[i] for i in order],
        [near[i] for i in order],
        [means[i] for i in order],
        noise_floor,
    )


def _cell(candidate: Candidate, column: Column, place: int | None, near: bool | None) -> str:
    entry = _entry(candidate, column)
    if entry is None or place is None:
        return "-"
    text = fmt(entry["value"])
    ci = entry.get("ci")
    if ci and all(c is not None for c in ci):
        text += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    text += f" #{place}"
    if place > 1 and near:
        text += " (~#1)"
    return text


def candidate_rows(ranking: Ranking) -> list[list[str]]:
    """Header and one row per candidate, best first: rank, name, verdict, each metric."""
    rows = [["rank", "candidate", "verdict"] + [c.label for c in ranking.columns]]
    for i, candidate in enumerate(ranking.candidates):
        cells = [
            _cell(candidate, column, ranking.places[i][j], ranking.near_best[i][j])
            for j, column in enumerate(ranking.columns)
        ]
        rows.append([str(i + 1), candidate.name, candidate.verdict, *cells])
    return rows


def legend(ranking: Ranking) -> str:
    return (
        "Ranked VALID first, then by the mean place over the primary metrics (a missing "
        "metric counts as last). Each value: point [95% interval] #place; (~#1) = within "
        f"noise of the best (intervals overlap or under {ranking.noise_floor:.0%} apart)."
    )


def render_candidates_markdown(ranking: Ranking, title: str = "Candidates") -> str:
    return "\n".join(
        [f"## {title}", "", _markdown_table(candidate_rows(ranking)), "", legend(ranking), ""]
    )


def render_candidates_console(ranking: Ranking) -> str:
    """The same table for a terminal: one block per candidate, best first (the metric
    columns are too wide to sit side by side in 80 columns)."""
    rows = candidate_rows(ranking)
    header, body = rows[0], rows[1:]
    width = max(len(h) for h in header[3:]) if len(header) > 3 else 0
    lines = []
    for row in body:
        lines.append(f"{row[0]}. {row[1]}  {row[2]}")
        lines += [f"     {h.ljust(width)}  {v}" for h, v in zip(header[3:], row[3:])]
    lines += ["", legend(ranking)]
    return "\n".join(lines)
