"""The exercise catalogue: one folder per exercise under `exercises/`.

    exercises/<name>/
      exercise.toml   name, title, role, kind, time_box, skills, available, unavailable_reason,
                      [scoring] (what is scored automatically and how), [rubric] (the human
                      part: one table per dimension with anchored levels "1".."4")
      brief.md        for the candidate
      starter/        put in the pack as-is
      fault/          pair-debug only: overlaid onto the pack's copy of the lab
      interviewer/    never packed: notes.md, solution/, checks/

`load_catalogue()` reads every exercise; a malformed exercise.toml is one ConfigError line
naming the file and the field.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import ConfigError, ModelNotFound

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
EXERCISES_ENV = "SERVELAB_EXERCISES"
ROLES = ("ML Engineer", "MLOps Engineer")
KINDS = ("take-home", "pair-debug")
METHODS = ("speed", "files", "hidden-checks")
INTERVIEWER = "interviewer"
PUBLIC_PARTS = ("brief.md", "starter", "fault")


def default_root() -> Path:
    """exercises/ of this checkout, or $SERVELAB_EXERCISES."""
    return Path(os.environ.get(EXERCISES_ENV) or ROOT / "exercises")


@dataclass(frozen=True)
class Exercise:
    """One validated exercise folder."""

    name: str
    title: str
    role: str
    kind: str
    time_box: str
    skills: tuple[str, ...]
    available: bool
    unavailable_reason: str
    scoring: Mapping[str, Any]
    rubric: Mapping[str, Any]  # dimension -> {"question": str, "levels": {1: text, ...}}
    folder: Path
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.scoring["method"])

    @property
    def brief_path(self) -> Path:
        return self.folder / "brief.md"

    @property
    def interviewer_dir(self) -> Path:
        return self.folder / INTERVIEWER

    @property
    def starter_dir(self) -> Path:
        return self.folder / "starter"

    @property
    def fault_dir(self) -> Path:
        return self.folder / "fault"

    def path(self, relative: str) -> Path:
        """A file named in exercise.toml, relative to the exercise folder."""
        return self.folder / relative

    def require_available(self) -> None:
        if not self.available:
            raise ConfigError(
                f"exercise {self.name} is not available: {self.unavailable_reason or 'no reason given'}"
            )

    def brief(self) -> str:
        return self.brief_path.read_text()


def _fail(where: Path, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _string(data: Mapping[str, Any], key: str, where: Path, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"{key} must be a non-empty string")
    return value


def _rubric(data: Any, where: Path) -> dict[str, Any]:
    from lab.grading.rubric import DIMENSIONS, canonical_dimension

    if not isinstance(data, Mapping) or not data:
        raise _fail(where, "[rubric] must have one table per dimension")
    rubric: dict[str, Any] = {}
    for raw_name, table in data.items():
        name = canonical_dimension(str(raw_name))
        if not isinstance(table, Mapping):
            raise _fail(where, f"[rubric.{raw_name}] must be a table")
        raw_levels = table.get("levels", {k: v for k, v in table.items() if str(k).isdigit()})
        if not isinstance(raw_levels, Mapping):
            raise _fail(where, f'[rubric.{raw_name}] levels must be a table like 1 = "..."')
        try:
            levels = {int(k): str(v) for k, v in raw_levels.items()}
        except ValueError:
            raise _fail(where, f"[rubric.{raw_name}] level keys must be numbers") from None
        if len(levels) < 2 or sorted(levels) != list(range(1, len(levels) + 1)):
            raise _fail(
                where, f"[rubric.{raw_name}] needs anchored levels 1, 2, ... (got {sorted(levels)})"
            )
        if any(not text.strip() for text in levels.values()):
            raise _fail(where, f"[rubric.{raw_name}] every level needs its anchor text")
        question = table.get("question") or table.get("probe") or table.get("what") or ""
        rubric[name] = {"question": str(question), "levels": levels}
    missing = [d for d in DIMENSIONS if d not in rubric]
    if missing:
        raise _fail(where, f"[rubric] lacks the dimension(s) {', '.join(missing)}")
    return rubric


def _scoring(data: Any, folder: Path, where: Path, kind: str, available: bool) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise _fail(where, "[scoring] must be a table saying what is scored and how")
    scoring = dict(data)
    method = scoring.get("method") or ("hidden-checks" if kind == "pair-debug" else None)
    if method not in METHODS:
        raise _fail(where, f"[scoring] method must be one of {', '.join(METHODS)}, got {method!r}")
    scoring["method"] = method
    _string(scoring, "what", where)
    if method == "speed" and available:
        for key in ("baseline", "reference", "scenario"):
            _string(scoring, key, where)
        for key in ("baseline", "reference"):
            file = scoring[key].rsplit(":", 1)[0]
            if not (folder / file).is_file():
                raise _fail(where, f"[scoring] {key} names {file}, which is not in {folder}")
        if not scoring["reference"].startswith(f"{INTERVIEWER}/"):
            raise _fail(where, "[scoring] reference must live under interviewer/ (never packed)")
        profiles = scoring.get("profiles")
        if not isinstance(profiles, Mapping) or not profiles:
            raise _fail(
                where, "[scoring.profiles.<name>] needs at least one profile of bench settings"
            )
        from lab.bench.config import BenchConfig

        for name, settings in profiles.items():
            if not isinstance(settings, Mapping):
                raise _fail(where, f"[scoring.profiles.{name}] must be a table of bench settings")
            config = BenchConfig.from_mapping(settings, f"{where} [scoring.profiles.{name}]")
            if scoring["scenario"] not in config.scenarios:
                raise _fail(
                    where,
                    f"[scoring.profiles.{name}] does not run the scored scenario {scoring['scenario']}",
                )
        default = scoring.get("default_profile", next(iter(profiles)))
        if default not in profiles:
            raise _fail(where, f"[scoring] default_profile {default!r} is not a profile")
        scoring["default_profile"] = default
    if method == "files":
        checks = scoring.get("check")
        if not isinstance(checks, list) or not checks:
            raise _fail(where, "[[scoring.check]] needs at least one file check")
        for i, check in enumerate(checks):
            if not isinstance(check, Mapping):
                raise _fail(where, f"[[scoring.check]] #{i + 1} must be a table")
            _string(check, "name", where)
            _string(check, "path", where)
            contains = check.get("contains", [])
            if not isinstance(contains, list) or not all(isinstance(c, str) for c in contains):
                raise _fail(where, f"[[scoring.check]] {check['name']}: contains must be strings")
    return scoring


def load_exercise(folder: Path) -> Exercise:
    """One exercise from its folder; ConfigError naming the file and field when malformed."""
    where = folder / "exercise.toml"
    try:
        data = tomllib.loads(where.read_text())
    except FileNotFoundError:
        raise _fail(folder, "no exercise.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise _fail(where, f"not valid TOML: {exc}") from None
    name = _string(data, "name", where)
    if name != folder.name:
        raise _fail(where, f"name {name!r} differs from its folder {folder.name!r}")
    role = _string(data, "role", where)
    if role not in ROLES:
        raise _fail(where, f"role must be one of {', '.join(ROLES)}, got {role!r}")
    kind = _string(data, "kind", where)
    if kind not in KINDS:
        raise _fail(where, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    skills = data.get("skills")
    if not isinstance(skills, list) or not skills or not all(isinstance(s, str) for s in skills):
        raise _fail(where, "skills must be a non-empty list of strings")
    available = data.get("available", True)
    if not isinstance(available, bool):
        raise _fail(where, "available must be true or false")
    reason = _string(data, "unavailable_reason", where, required=not available)
    if not (folder / "brief.md").is_file():
        raise _fail(folder, "no brief.md (the candidate's brief)")
    if kind == "pair-debug" and available and not (folder / "fault").is_dir():
        raise _fail(folder, "a pair-debug exercise needs fault/ (files overlaid onto the lab)")
    return Exercise(
        name=name,
        title=_string(data, "title", where),
        role=role,
        kind=kind,
        time_box=_string(data, "time_box", where),
        skills=tuple(skills),
        available=available,
        unavailable_reason=reason,
        scoring=_scoring(data.get("scoring"), folder, where, kind, available),
        rubric=_rubric(data.get("rubric"), where),
        folder=folder,
        raw=data,
    )


def load_catalogue(root: Path | str | None = None) -> dict[str, Exercise]:
    """Every exercise under `root` (default: exercises/), by name."""
    base = Path(root) if root is not None else default_root()
    if not base.is_dir():
        raise ConfigError(f"no exercise catalogue at {base} (set {EXERCISES_ENV} or --exercises)")
    return {
        folder.name: load_exercise(folder)
        for folder in sorted(base.iterdir())
        if folder.is_dir() and not folder.name.startswith((".", "_"))
    }


def get_exercise(name: str, root: Path | str | None = None) -> Exercise:
    base = Path(root) if root is not None else default_root()
    folder = base / name
    if not (folder / "exercise.toml").is_file():
        known = ", ".join(load_catalogue(base)) if base.is_dir() else "none"
        raise ModelNotFound(f"no exercise {name!r} in {base} (known: {known})")
    return load_exercise(folder)
