"""The human part of a grade: five dimensions, each with anchored levels (1 to 4).

The interviewer fills in a level per dimension (and a line of evidence) in the grade
report's Markdown; the anchors come from the exercise's [rubric] table, so every candidate
is held to the same bar.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DIMENSIONS = (
    "production_exposure",
    "debugging_approach",
    "data_quality_instincts",
    "trade_off_opinions",
    "communication",
)
_ALIASES = {
    "data_quality": "data_quality_instincts",
    "trade_offs": "trade_off_opinions",
    "tradeoffs": "trade_off_opinions",
    "tradeoff_opinions": "trade_off_opinions",
    "production": "production_exposure",
    "debugging": "debugging_approach",
}


def canonical_dimension(name: str) -> str:
    """ "Data-quality instincts" -> "data_quality_instincts" (aliases folded)."""
    key = "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())
    return _ALIASES.get(key, key)


def title(dimension: str) -> str:
    return dimension.replace("_", " ").capitalize().replace("Trade off", "Trade-off")


def rubric_sheet(rubric: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rubric as it goes into a grade report: every dimension with its anchors and an
    empty level for the interviewer (standard dimensions first, then any extra ones)."""
    order = [d for d in DIMENSIONS if d in rubric] + [d for d in rubric if d not in DIMENSIONS]
    return [
        {
            "dimension": d,
            "question": rubric[d]["question"],
            "levels": {str(k): v for k, v in sorted(rubric[d]["levels"].items())},
            "level": None,
            "evidence": "",
        }
        for d in order
    ]


def rubric_markdown(sheet: list[dict[str, Any]]) -> list[str]:
    """The rubric as Markdown for the interviewer to fill in."""
    lines = [
        "Fill in one level per dimension with a line of evidence (what the candidate said or",
        "did). Levels are anchored: pick the highest whose description fully holds.",
        "",
    ]
    for entry in sheet:
        lines.append(f"### {title(entry['dimension'])}")
        if entry["question"]:
            lines.append(f"_{entry['question']}_")
        lines.append("")
        for level, text in entry["levels"].items():
            lines.append(f"- **{level}**: {text}")
        chosen = entry["level"] if entry["level"] is not None else "__"
        lines += ["", f"Level: {chosen}   Evidence: {entry['evidence'] or '...'}", ""]
    return lines
