"""`servelab grade SUBMISSION... --exercise NAME`: the automatic part of a grade.

Untrusted code never runs here: every runner (the candidate's, and the exercise's baseline
and reference alike) is created with lab.isolation's `make_runner` in a worker process.

speed (optimise-encoder)
    1. Gate: the candidate's runner loads and passes `verify` (batch 1, padded mixed-length
       batches, fresh samples) in its worker.
    2. Legs: one `run_bench` per runner under test, each measured alternately (ABBA) with
       the exercise's baseline: the reference leg once per grade run, then each candidate's
       leg. Every leg has the audits and, for candidates, the replay check.
    3. Score = (s_c - 1) / (s_r - 1), s = the scored scenario's speed-up over the baseline
       measured in the leg (baseline 0, reference 1), with an interval from the corners of
       both 95% intervals. Any verify failure, INVALID leg, audit or replay flag, or a
       runner that did not run isolated gives 0 with the reason instead. A reference that is
       not measurably faster than the baseline in this run gives no score at all.
files (ship-it)
    A checklist over the handed-in files (no code runs); score = share passed.
hidden-checks (pair-debug scenarios)
    `lab.grading.debug.run_hidden_checks(exercise_dir, tree)` on the candidate's copy of the
    lab; score 1 when every check passes, else 0 with the failing checks.
"""

from __future__ import annotations

import importlib
import math
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import ConfigError, LabError
from lab.grading.catalogue import Exercise
from lab.workload import read_secret_seed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NOTES_LIMIT_CHARS = 20_000  # NOTES.md quoted in the report, cut beyond this


@dataclass
class Submission:
    """What a candidate handed in: a folder (or a single plugin file for speed exercises)."""

    name: str
    path: Path
    runner: str | None = None  # absolute "file.py:Class" (speed exercises)
    runner_options: dict[str, Any] = field(default_factory=dict)
    notes: str | None = None

    def describe(self) -> dict[str, Any]:
        from lab.grading.pack import sha256

        files = (
            {
                str(p.relative_to(self.path)): sha256(p)
                for p in sorted(self.path.rglob("*"))
                if p.is_file()
            }
            if self.path.is_dir()
            else {self.path.name: sha256(self.path)}
        )
        return {
            "name": self.name,
            "path": str(self.path),
            "runner": self.runner,
            "runner_options": self.runner_options,
            "files_sha256": files,
        }


def load_submission(spec: str, exercise: Exercise, name: str | None = None) -> Submission:
    """A folder (with NOTES.md, optional submission.toml), or for speed exercises a plugin
    file `path.py` / `path.py:Class`."""
    raw_path, class_name = spec, ""
    if ".py:" in spec:
        raw_path, _, class_name = spec.rpartition(":")
    path = Path(raw_path).resolve()
    if not path.exists():
        raise ConfigError(f"no submission at {raw_path}")
    default_runner = str(exercise.scoring.get("submission_runner", "runner.py:CandidateRunner"))
    if path.is_file():
        if exercise.method != "speed" or path.suffix != ".py":
            raise ConfigError(f"submission {raw_path}: expected a folder for {exercise.name}")
        runner = f"{path}:{class_name or default_runner.rsplit(':', 1)[1]}"
        default_name = path.parent.name if path.stem == "runner" else path.stem
        return Submission(name or default_name, path, runner)
    notes_path = path / "NOTES.md"
    notes = notes_path.read_text(errors="replace") if notes_path.is_file() else None
    submission = Submission(name or path.name, path, notes=notes)
    if exercise.method != "speed":
        return submission
    settings: Mapping[str, Any] = {}
    toml_path = path / "submission.toml"
    if toml_path.is_file():
        try:
            settings = tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_path}: not valid TOML: {exc}") from None
    runner = str(settings.get("runner", default_runner))
    file, _, cls = runner.rpartition(":")
    if not file or not cls:
        raise ConfigError(f"{toml_path}: runner must look like file.py:ClassName, got {runner!r}")
    plugin = (path / file).resolve()
    if path not in plugin.parents or not plugin.is_file():
        raise ConfigError(f"submission {path.name}: no runner file {file} in the submission")
    options = settings.get("runner_options", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"{toml_path}: [runner_options] must be a table")
    submission.runner = f"{plugin}:{cls}"
    submission.runner_options = dict(options)
    return submission


# ----- scores ----------------------------------------------------------------------------
def zero(reason: str) -> dict[str, Any]:
    """A gate failed: the score is 0 and says why; no interval, nothing that looks measured."""
    return {"value": 0.0, "ci": None, "zeroed": True, "reason": reason}


def not_scored(reason: str) -> dict[str, Any]:
    return {"value": None, "ci": None, "zeroed": False, "reason": reason}


def normalised(candidate: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    """(s_c - 1) / (s_r - 1) from two speed-ups over the same baseline, with the range over
    the corners of both intervals (the function is monotone in each)."""
    s_c, s_r = float(candidate["ratio"]), float(reference["ratio"])
    value = (s_c - 1) / (s_r - 1)
    ci = None
    c_ci: list[Any] = list(candidate.get("ci") or [])
    r_ci: list[Any] = list(reference.get("ci") or [])
    finite = c_ci and r_ci and all(v is not None and math.isfinite(v) for v in (*c_ci, *r_ci))
    if finite and r_ci[0] > 1:
        corners = [(c - 1) / (r - 1) for c in c_ci for r in r_ci]
        ci = [min(corners), max(corners)]
    return {"value": value, "ci": ci, "zeroed": False, "reason": None}


def scored_scenario(report: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((s for s in report.get("scenarios", []) if s["scenario"] == name), None)


def slo_summary(report: Mapping[str, Any], profile: str) -> dict[str, Any]:
    """SLO compliance from the candidate leg's find-peak (or server) scenario."""
    for name in ("find-peak", "server"):
        scenario = scored_scenario(report, name)
        if scenario is None:
            continue
        p99 = scenario["latency"]["percentiles"]["p99"]
        return {
            "measured": True,
            "scenario": name,
            "slo_ms": report.get("slo_ms"),
            "qps": scenario.get("peak_qps", scenario.get("target_qps")),
            "p99_ms": p99["ms"],
            "p99_claimed": p99["claimed"],
            "compliant": bool(scenario["validity"]["valid"]),
            "reasons": scenario["validity"]["reasons"],
        }
    return {
        "measured": False,
        "why": f"profile {profile} runs no find-peak or server scenario (throughput only)",
    }


# ----- speed exercises -------------------------------------------------------------------
@dataclass
class Leg:
    """One bench run: a runner under test alternating with the baseline."""

    role: str
    report: dict[str, Any]
    paths: dict[str, Path]


def _spec(exercise: Exercise, key: str) -> str:
    file, _, cls = str(exercise.scoring[key]).rpartition(":")
    return f"{exercise.path(file)}:{cls}"


def bench_settings(
    exercise: Exercise,
    profile: str,
    runner: str,
    options: Mapping[str, Any],
    name: str,
    replay: bool,
    seed: int | None = None,
) -> Any:
    from lab.bench.config import BenchConfig, flat_settings

    profiles = exercise.scoring["profiles"]
    if profile not in profiles:
        raise ConfigError(
            f"exercise {exercise.name} has no profile {profile!r} (profiles: {', '.join(profiles)})"
        )
    settings = flat_settings(profiles[profile], f"{exercise.name} profile {profile}")
    settings.update(
        model=exercise.scoring["model"],
        size=exercise.scoring.get("size"),
        precision=exercise.scoring.get("precision", "fp32"),
        runner=runner,
        runner_options=dict(options),
        baseline=_spec(exercise, "baseline"),
        baseline_options={},
        name=name,
        replay_check=replay and settings.get("replay_check", True),
        isolation="process",  # graded code always runs in a worker process
    )
    if seed is not None:
        settings["seed"] = seed
    return BenchConfig.from_mapping(settings, f"{exercise.name} profile {profile}")


def run_leg(
    exercise: Exercise,
    profile: str,
    role: str,
    runner: str,
    options: Mapping[str, Any],
    output: Path,
    handle: Any,
    progress: Any,
    seed: int | None = None,
) -> Leg:
    from lab.bench.report import write_reports
    from lab.bench.run import run_bench

    config = bench_settings(
        exercise, profile, runner, options, f"{exercise.name}-{role}", role != "reference", seed
    )
    report = run_bench(config, progress, handle=handle)
    paths = write_reports(report, output / "legs", html=config.report.html, latest=False)
    return Leg(role, report, paths)


def verify_gate(
    submission: Submission, handle: Any, timeout_s: float
) -> tuple[dict[str, Any], str | None]:
    """Load and verify the candidate's runner in its worker: (verify dict, failure or None)."""
    from lab.isolation import make_runner
    from lab.verify import verify_runner

    assert submission.runner is not None
    runner = make_runner(
        submission.runner, submission.runner_options, isolation="process", infer_timeout_s=timeout_s
    )
    try:
        runner.load(handle)
        result = verify_runner(handle, runner)
    except LabError as exc:
        return {"passed": False, "error": str(exc)}, f"runner did not load or run: {exc}"
    finally:
        runner.close()
    if not result.passed:
        first = result.failures[0] if result.failures else "see the verify result"
        return result.to_dict(), f"verify failed: {first}"
    return result.to_dict(), None


def gate_reasons(report: Mapping[str, Any], scored: str) -> list[str]:
    """Why a leg cannot be scored (empty: it can): every reason of the scored scenario; in
    any other scenario, what says the answers or the measurement cannot be trusted (a failed
    audit, repeated samples); the replay check, a lost or over-budget worker, a partial run;
    and a runner outside an isolated worker. A find-peak or server scenario that only missed
    its SLO, its minimum length or stability is the SLO's finding (`slo_summary`), not a gate:
    on a loaded machine find-peak may confirm no peak at all, even for the reference."""
    reasons: list[str] = []
    for scenario in report["scenarios"]:
        name = scenario["scenario"]
        if name == scored:
            reasons += [f"{name}: {r}" for r in scenario["validity"]["reasons"]]
            continue
        audit = scenario.get("audit")
        if audit is not None and not audit["passed"]:
            reasons.append(
                f"{name}: audit failed: outputs of {len(audit['failing'])} of "
                f"{audit['audited']} audited samples do not match the reference"
            )
        repeated = (scenario.get("distinct_samples") or {}).get("repeated")
        if repeated:
            reasons.append(f"{name}: {repeated} samples were repeats")
    prefixes = tuple(f"{s['scenario']}: " for s in report["scenarios"])
    reasons += [r for r in report["verdict"]["reasons"] if not r.startswith(prefixes)]
    isolation = report.get("isolation") or {}
    if isolation.get("aborted_scenario"):
        reasons.append(f"{isolation['aborted_scenario']}: not run to the end (worker lost)")
    if isolation.get("mode") != "process":
        reasons.append("the runner did not run in an isolated worker process")
    return reasons


def leg_summary(leg: Leg, scenario: str) -> dict[str, Any]:
    result = scored_scenario(leg.report, scenario) or {}
    speed = result.get("speedup")
    return {
        "report": str(leg.paths.get(".json")),
        "valid": leg.report["verdict"]["valid"],
        "reasons": leg.report["verdict"]["reasons"],
        "seed_source": leg.report["model"].get("seed_source"),
        "samples_per_s": (result.get("throughput") or {}).get("samples_per_s"),
        "samples_per_s_ci": (result.get("throughput") or {}).get("samples_per_s_ci"),
        "baseline_samples_per_s": ((result.get("baseline") or {}).get("throughput") or {}).get(
            "samples_per_s"
        ),
        "speedup": speed,
        "wall_s": leg.report.get("wall_s"),
    }


def grade_speed(
    exercise: Exercise,
    submissions: Sequence[Submission],
    profile: str,
    output: Path,
    progress: Any,
    log: Any = print,
) -> list[dict[str, Any]]:
    """The automatic part for each submission (see the module docstring)."""
    from lab.export import ensure_exported
    from lab.repository import ModelRepository

    scoring = exercise.scoring
    handle = ModelRepository().handle(
        str(scoring["model"]), scoring.get("size"), str(scoring.get("precision", "fp32"))
    )
    ensure_exported(handle)
    scenario = str(scoring["scenario"])
    # Every leg draws the same samples: the reference's and each candidate's speed-ups are
    # then ratios over one workload (with fresh samples per leg, the sequence lengths alone,
    # hence the padding a baseline wastes, moved the reference's speed-up from 3x to 6x).
    # The public+secret seed when the interviewer set one, else one fresh seed per grade run
    # (never known to the runners, which only see samples as they are issued).
    seed = None if read_secret_seed() is not None else secrets.randbits(63)
    parts: list[dict[str, Any]] = []
    for submission in submissions:
        log(f"verify {submission.name} (isolated worker)")
        verified, failure = verify_gate(submission, handle, timeout_s=60.0)
        parts.append({"verify": verified, "score": zero(failure) if failure else None})
    reference: Leg | None = None
    if any(p["score"] is None for p in parts):
        log(f"reference leg: {scoring['reference']} vs {scoring['baseline']}")
        reference = run_leg(
            exercise,
            profile,
            "reference",
            _spec(exercise, "reference"),
            {},
            output,
            handle,
            progress,
            seed,
        )
    for submission, part in zip(submissions, parts):
        part["reference_leg"] = leg_summary(reference, scenario) if reference else None
        if part["score"] is not None:
            part["slo"] = {"measured": False, "why": "not benchmarked: the gate failed"}
            continue
        assert submission.runner is not None
        log(f"candidate leg: {submission.name} vs {scoring['baseline']}")
        leg = run_leg(
            exercise, profile, "candidate", submission.runner, submission.runner_options,
            output, handle, progress, seed,
        )  # fmt: skip
        part["candidate_leg"] = leg_summary(leg, scenario)
        part["slo"] = slo_summary(leg.report, profile)
        reasons = gate_reasons(leg.report, scenario)
        speed = part["candidate_leg"]["speedup"]
        assert reference is not None
        ref_speed = part["reference_leg"]["speedup"]
        if reasons:
            part["score"] = zero("; ".join(reasons))
        elif reference_gate := gate_reasons(reference.report, scenario):
            part["score"] = not_scored(
                "the reference leg was INVALID: " + "; ".join(reference_gate)
            )
        elif not speed or not ref_speed:
            part["score"] = not_scored(f"no {scenario} speed-up was measured")
        elif not ref_speed["faster"]:
            part["score"] = not_scored(
                f"the reference was not measurably faster than the baseline in this run "
                f"({ref_speed['ratio']:.2f}x [{ref_speed['ci'][0]:.2f}, {ref_speed['ci'][1]:.2f}]): "
                "no scale to normalise on; rerun on a quieter machine or a longer profile"
            )
        else:
            part["score"] = normalised(speed, ref_speed)
    return parts


# ----- file checks -----------------------------------------------------------------------
_METRIC = re.compile(r"\b(?:nv|servelab)_[a-z0-9_]+")


def exported_metrics() -> set[str]:
    """The metric names `servelab serve` exports (read from lab/serve/metrics.py)."""
    import lab.serve.metrics as metrics

    return set(re.findall(r'"((?:nv|servelab)_[a-z0-9_]+)"', Path(metrics.__file__).read_text()))


def grade_files(exercise: Exercise, submission: Submission) -> dict[str, Any]:
    checks = []
    known = exported_metrics()
    for check in exercise.scoring["check"]:
        path = submission.path / check["path"]
        problems: list[str] = []
        if not path.is_file():
            problems.append(f"no {check['path']}")
        else:
            text = path.read_text(errors="replace")
            lowered = text.lower()
            missing = [c for c in check.get("contains", []) if c.lower() not in lowered]
            if missing:
                problems.append(f"{check['path']} does not mention {', '.join(missing)}")
            if check.get("known_metrics"):
                unknown = sorted(set(_METRIC.findall(text)) - known)
                if unknown:
                    problems.append(
                        f"{check['path']} uses metrics servelab does not export: {', '.join(unknown)}"
                    )
        checks.append({"name": check["name"], "passed": not problems, "problems": problems})
    passed = sum(c["passed"] for c in checks)
    score = {
        "value": passed / len(checks),
        "ci": None,
        "zeroed": False,
        "reason": f"{passed} of {len(checks)} file checks passed",
    }
    return {"checks": checks, "score": score}


# ----- hidden checks (pair-debug) --------------------------------------------------------
def grade_hidden_checks(exercise: Exercise, submission: Submission) -> dict[str, Any]:
    try:
        debug = importlib.import_module("lab.grading.debug")
    except ModuleNotFoundError as exc:
        if exc.name != "lab.grading.debug":
            raise
        return {
            "checks": [],
            "score": not_scored(
                "hidden checks not available: lab/grading/debug.py is not in this build"
            ),
        }
    result = debug.run_hidden_checks(exercise.folder, submission.path)
    lines = getattr(result, "lines", None) or getattr(result, "checks", None) or [str(result)]
    lines = [str(line) for line in lines]
    passed = bool(result.passed)
    score = (
        {"value": 1.0, "ci": None, "zeroed": False, "reason": "every hidden check passed"}
        if passed
        else zero("hidden checks failed: " + "; ".join(lines[:5]))
    )
    return {"checks": lines, "score": score}
