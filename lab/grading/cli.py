"""`servelab exercise list|show|pack` and `servelab grade`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lab.errors import ConfigError


def register(sub: Any) -> None:
    exercise = sub.add_parser("exercise", help="the exercise catalogue: list, show, pack")
    exercise.add_argument(
        "--exercises", default=None, metavar="DIR", help="catalogue folder (default: ./exercises)"
    )
    actions = exercise.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="every exercise: role, kind, time box")
    listing.set_defaults(func=cmd_list)
    show = actions.add_parser("show", help="an exercise's brief, what is scored, the rubric")
    show.add_argument("name")
    show.set_defaults(func=cmd_show)
    pack = actions.add_parser(
        "pack", help="write the candidate bundle (never the interviewer/ material)"
    )
    pack.add_argument("name")
    pack.add_argument("--out", required=True, metavar="DIR", help="new or empty folder")
    pack.set_defaults(func=cmd_pack)
    exercise.set_defaults(func=lambda args: exercise.print_help() or 2)

    grade = sub.add_parser(
        "grade",
        help="grade submissions: isolated verify + benchmark, normalised score, rubric",
        description="Grade one or more submissions of an exercise on this machine, in one "
        "run (the reference is measured once and every candidate is normalised against it). "
        "Set SERVELAB_SECRET_SEED so the samples are unpredictable and reproducible by you. "
        "Candidate code only ever runs in a worker process. Exit 0 when every submission was "
        "graded (a ZERO is a grade), 2 on a usage error.",
    )
    grade.add_argument(
        "submissions", nargs="+", metavar="SUBMISSION", help="folder or plugin.py[:Class]"
    )
    grade.add_argument("--exercise", required=True, help="exercise name")
    grade.add_argument("--exercises", default=None, metavar="DIR", help="catalogue folder")
    grade.add_argument(
        "--profile", default=None, help="scoring profile (speed exercises): full (default) or ci"
    )
    grade.add_argument("--output", default="grades", metavar="DIR", help="where reports go")
    grade.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    grade.add_argument(
        "--mlflow-uri",
        nargs="?",
        const="file:./mlruns",
        default=None,
        metavar="URI",
        help="log each grade (score, verdict, the automatic part, the report files) to "
        "MLflow; without URI a local file store, file:./mlruns (needs: pip install "
        "'servelab[mlflow]')",
    )
    grade.set_defaults(func=cmd_grade)


def cmd_list(args: argparse.Namespace) -> int:
    from lab.grading.catalogue import load_catalogue

    rows = [("exercise", "role", "kind", "time box", "available", "title")]
    for ex in load_catalogue(args.exercises).values():
        state = "yes" if ex.available else "no (see show)"
        rows.append((ex.name, ex.role, ex.kind, ex.time_box, state, ex.title))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from lab.grading.catalogue import get_exercise
    from lab.grading.rubric import rubric_markdown, rubric_sheet

    ex = get_exercise(args.name, args.exercises)
    print(f"{ex.name}: {ex.title}")
    print(f"role {ex.role}, {ex.kind}, time box {ex.time_box}; skills: {', '.join(ex.skills)}")
    if not ex.available:
        print(f"NOT AVAILABLE: {ex.unavailable_reason}")
    print()
    print(ex.brief().rstrip())
    print()
    print(f"## Scored automatically ({ex.method})")
    print(ex.scoring["what"].strip())
    print()
    print("## Rubric")
    print("\n".join(rubric_markdown(rubric_sheet(ex.rubric))).rstrip())
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from lab.grading.catalogue import get_exercise
    from lab.grading.pack import pack

    ex = get_exercise(args.name, args.exercises)
    manifest = pack(ex, Path(args.out))
    print(f"packed {ex.name} into {args.out}: {len(manifest['files'])} files")
    print(f"  hand the candidate {args.out}/ (BRIEF.md, SUBMIT.md, submission/, servelab/)")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from lab.bench.paths import check_output_folder
    from lab.bench.progress import Progress
    from lab.grading.catalogue import get_exercise
    from lab.grading.grade import grade_files, grade_hidden_checks, grade_speed, load_submission
    from lab.grading.report import build_report, headline, write_grade_report
    from lab.workload import read_secret_seed

    ex = get_exercise(args.exercise, args.exercises)
    ex.require_available()
    output = check_output_folder(args.output)
    mlflow_uri = args.mlflow_uri
    if mlflow_uri is not None:
        from lab.tracking import require_mlflow, resolve_uri

        require_mlflow()  # before anything is measured, not after
        mlflow_uri = resolve_uri(mlflow_uri)
    submissions = [load_submission(s, ex) for s in args.submissions]
    names = [s.name for s in submissions]
    if len(set(names)) != len(names):
        raise ConfigError(f"two submissions share a name: {', '.join(names)}")
    secret = read_secret_seed() is not None
    profile = None
    if ex.method == "speed":
        profile = args.profile or str(ex.scoring["default_profile"])
        if profile not in ex.scoring["profiles"]:
            raise ConfigError(
                f"exercise {ex.name} has no profile {profile!r} (profiles: {', '.join(ex.scoring['profiles'])})"
            )
        with Progress(enabled=not args.no_progress) as progress:
            parts = grade_speed(ex, submissions, profile, output, progress)
    elif ex.method == "files":
        parts = [grade_files(ex, s) for s in submissions]
    else:
        parts = [grade_hidden_checks(ex, s) for s in submissions]
    if not secret:
        print(
            "note: SERVELAB_SECRET_SEED is not set: this grade run drew one fresh seed for "
            "all its legs (recorded in the leg reports)"
        )
    for submission, automatic in zip(submissions, parts):
        report = build_report(ex, submission, automatic, profile, secret)
        paths = write_grade_report(report, output)
        print(f"{submission.name}:")
        for line in headline(report):
            print(f"  {line}")
        print(f"  wrote {paths['.json']} and {paths['.md']}")
        if mlflow_uri is not None:
            from lab.tracking import log_grade_report

            run_id = log_grade_report(mlflow_uri, report, paths.values())
            print(f"  logged MLflow run {run_id} to {mlflow_uri}")
    return 0
