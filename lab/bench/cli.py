"""`servelab bench` and `servelab compare`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from lab.bench.config import MAIN_JOB_SCENARIOS, BenchConfig, FindPeakConfig, flat_settings
from lab.bench.flags import add_config_flags, given_settings
from lab.bench.paths import check_output_file, check_output_folder
from lab.cliargs import add_model_args, add_runner_args
from lab.dist.cli import DIST_RUNNER_SPEC, add_dist_args, dist_runner_from_args, dist_settings
from lab.errors import CheckFailed, ConfigError
from lab.tracking import DEFAULT_URI, INSTALL_HINT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BENCH_EPILOG = f"""
scenarios (MLPerf names): single-stream (p90 latency, one query at a time), offline
(samples/s, everything issued at once in batches of --batch-size), server (Poisson arrivals
at --qps; VALID only when p99 from the scheduled arrival meets the model's SLO), find-peak
(highest VALID server QPS, then a full server run there), sweep (closed-loop --concurrency
levels). Every run is VALID or INVALID with its reasons; the exit code is 0 for VALID, 1 for
INVALID (reports are written either way).

--main-job (what `make bench` runs): export the model if needed and verify the runner against
the reference (exit 1 if verify fails), then {", ".join(MAIN_JOB_SCENARIOS)} with the defaults
below on the configured runner (encoder small on ONNX Runtime CPU unless flags say otherwise).
find-peak brackets the peak with short steps ({FindPeakConfig.find_peak_step_s:g} s, at most
{FindPeakConfig.find_peak_max_steps}), then confirms it with a full server run (>= 700 queries, all
rules, audit), stepping down and retrying up to 4 times when that run fails. Reports go to
--output as <timestamp>-<model>-<size>-<runner>.json/.md/.html and latest.json/.md/.html.
Wall time on 2 CPU cores: about 2 minutes on a quiet machine, under 4 when every retry runs.

Validity defaults: at least --duration-s seconds and --min-queries queries (offline: samples);
p90 needs 64 queries and p99 662. Stability (perf_analyzer): the minimum duration is cut into
--stability-windows windows and the last 3 must agree within --stability-tolerance (default
15%; perf_analyzer uses 10%, a shared 2-core CPU is noisier), unless their own sampling
noise (3 standard errors) explains the difference; single-stream, sweep and offline keep
measuring, up to twice --duration-s, until they agree. A random --audit-fraction of the
timed queries (16..128 of them, or --audit-count) is checked against the reference; the
replay check flags results that look cached. Set SERVELAB_SECRET_SEED to make the audited
samples unpredictable (it is read once, removed from the environment, never written).

--config FILE takes the same settings as JSON or TOML (snake_case or kebab-case keys), flat
or in group tables ([batching], [checks], [find_peak], [report], as in the report's
config); flags given on the command line win.
"""


def register(sub: Any) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure latency and throughput, with correctness audits",
        description="Benchmark a runner (or a remote server) with MLPerf-style scenarios.",
        epilog=BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(bench)
    add_runner_args(bench)
    add_bench_args(bench)
    bench.add_argument(
        "--mlflow-uri",
        nargs="?",
        const=DEFAULT_URI,
        default=None,
        metavar="URI",
        help="log the run (settings, results, report files) to MLflow; without URI a local "
        f"file store, {DEFAULT_URI} (needs: {INSTALL_HINT})",
    )
    add_dist_args(bench)  # --dist MODE --nproc N: a torchrun job behind the harness
    bench.set_defaults(func=bench_command, argv=None)  # lab.cli fills argv: provenance

    compare = sub.add_parser(
        "compare",
        help="put bench reports side by side",
        description="Compare bench reports: validity first, then which report is better on "
        "each primary metric (ratio, interval, beyond noise or not), the configuration and "
        "environment differences, every metric, then each report's own baseline ratio. "
        "Reports of different models, sizes or precisions are refused unless --force.",
    )
    compare.add_argument(
        "reports", nargs="+", help="bench report JSON files (the first is the reference)"
    )
    compare.add_argument("--html", default=None, metavar="FILE", help="also write an HTML page")
    compare.add_argument(
        "--output", default=None, metavar="FILE", help="write the Markdown here instead of stdout"
    )
    compare.add_argument(
        "--noise-floor",
        type=float,
        default=0.10,
        help="relative difference treated as noise even when intervals do not overlap (default 0.10)",
    )
    compare.add_argument(
        "--force",
        action="store_true",
        help="compare reports of different models, sizes or precisions (refused otherwise)",
    )
    compare.add_argument(
        "--candidates",
        action="store_true",
        help="open with the candidate view (every report ranked, verdicts first) even for "
        "two reports; it is the default for three or more",
    )
    compare.set_defaults(func=compare_command)


def add_bench_args(p: argparse.ArgumentParser) -> None:
    """--config, one flag per BenchConfig field (lab.bench.flags), --no-progress. Unset
    flags fall back to --config, then to the BenchConfig defaults."""
    p.add_argument("--config", default=None, metavar="FILE", help="JSON or TOML settings file")
    add_config_flags(p, BenchConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")


def read_config_file(path: str) -> dict[str, Any]:
    """Flat settings from a JSON or TOML file (flat keys and/or group tables)."""
    file = Path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"no config file {file}") from None
    try:
        data = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a table/object of settings")
    return flat_settings(data, str(file))


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Defaults < --config file < flags given on the command line."""
    from lab.runners import parse_options

    from_file = read_config_file(args.config) if args.config else {}
    settings: dict[str, Any] = dict(from_file)
    given = vars(args)
    # The shared model/runner flags (lab/cliargs.py) always have a value: one left at its
    # default yields to the file.
    for f in fields(BenchConfig):
        shared = f.name in given and f.name != "runner_options" and not f.metadata["cli"]
        if shared and (f.name not in from_file or given[f.name] != f.default):
            settings[f.name] = given[f.name]
    if args.runner_option or "runner_options" not in from_file:
        settings["runner_options"] = parse_options(args.runner_option)
    settings.update(given_settings(args, BenchConfig))
    if isinstance(settings.get("baseline_options"), list):
        settings["baseline_options"] = parse_options(settings["baseline_options"])
    if settings.get("main_job") and "scenarios" not in settings:
        settings["scenarios"] = list(MAIN_JOB_SCENARIOS)
    return BenchConfig.from_mapping(settings, args.config or "bench flags")


def bench_command(args: argparse.Namespace) -> int:
    from lab.bench.progress import Progress
    from lab.bench.render import summary_table
    from lab.bench.report import write_reports
    from lab.bench.run import PartialRun, run_bench

    config = config_from_args(args)
    runner = dist_runner_from_args(args, config.worker.load_timeout_s)
    if runner is not None:  # the report names what runs: the dist runner and its options
        config = replace(config, runner=DIST_RUNNER_SPEC, runner_options=dist_settings(args))
    check_output_folder(config.report.output)  # before any measuring, not after it
    mlflow_uri = getattr(args, "mlflow_uri", None)
    if mlflow_uri is not None:
        from lab.tracking import require_mlflow, resolve_uri

        require_mlflow()  # before any measuring, not after it
        mlflow_uri = resolve_uri(mlflow_uri)
    extra: dict[str, Any] = {}
    handle = None
    try:
        with Progress(enabled=not args.no_progress) as progress:
            if config.main_job:
                handle, runner, extra = prepare_main_job(config, progress, runner)
            report = run_bench(
                config,
                progress,
                handle=handle,
                runner=runner,
                extra=extra,
                command=getattr(args, "argv", None),
                config_path=args.config,
            )
    except PartialRun as stopped:
        # What was measured is written; then the error goes on as it came (its exit code,
        # one line for a LabError, 130 for Ctrl-C, a traceback for a bug).
        partial = write_reports(stopped.report, config.report.output, html=config.report.html)
        print(summary_table(stopped.report))
        print()
        for path in partial.values():
            print(f"wrote {path} (PARTIAL: stopped during {stopped})")
        raise stopped.error from None
    paths = write_reports(report, config.report.output, html=config.report.html)
    print(summary_table(report))
    print()
    for path in paths.values():
        print(f"wrote {path}")
    if ".html" in paths:
        print(f"open {paths['.html'].resolve().as_uri()} in a browser for the plots")
    if mlflow_uri is not None:
        from lab.bench.report import jsonable
        from lab.tracking import log_bench_report

        run_id = log_bench_report(mlflow_uri, jsonable(report), paths.values())
        print(f"logged MLflow run {run_id} to {mlflow_uri}")
    return 0 if report["verdict"]["valid"] else 1


def prepare_main_job(
    config: BenchConfig, progress: Any, runner: Any = None
) -> tuple[Any, Any, dict[str, Any]]:
    """Export (if needed) and verify the model before any timing; verify failing is exit 1."""
    from lab.export import ensure_exported
    from lab.isolation import make_runner
    from lab.repository import ModelRepository
    from lab.verify import precision_hint, verify_runner

    handle = ModelRepository(config.model_repository).handle(
        config.model, config.size, config.precision
    )
    with progress.phase(f"export {handle.name} {handle.size} {handle.precision} (if needed)", 0):
        ensure_exported(handle)
    worker = config.worker
    runner = runner or make_runner(
        config.runner,
        config.runner_options,
        isolation=worker.isolation,
        load_timeout_s=worker.load_timeout_s,
        infer_timeout_s=worker.worker_timeout_s,
    )
    runner.load(handle)
    with progress.phase(f"verify {config.runner} (batch 1, mixed padded batches, fresh)", 0):
        try:
            result = verify_runner(handle, runner)
        except BaseException:
            runner.close()
            raise
    if not result.passed:
        runner.close()
        print(result.summary(), file=sys.stderr)
        hint = precision_hint(config.runner_options, handle.precision)
        raise CheckFailed(
            f"verify failed for runner {config.runner} on {handle.name} {handle.size}: "
            f"{result.failures[0] if result.failures else 'see above'}"
            + (f" ({hint})" if hint else "")
        )
    return handle, runner, {"verify": result.to_dict()}


def compare_command(args: argparse.Namespace) -> int:
    from lab.bench.candidates import render_candidates_console
    from lab.bench.compare import candidate_ranking, load_and_compare, render_html, render_markdown

    if args.noise_floor < 0:
        raise ConfigError("--noise-floor must be >= 0")
    for path, flag in ((args.output, "--output"), (args.html, "--html")):
        if path:
            check_output_file(path, flag)
    comparison = load_and_compare(args.reports, args.noise_floor, args.force)
    candidates = args.candidates or len(args.reports) > 2
    if candidates:
        print("Candidates, best first:\n")
        print(render_candidates_console(candidate_ranking(comparison)))
        print()
    if args.output:
        Path(args.output).write_text(render_markdown(comparison, candidates))
        print(f"wrote {args.output}")
    else:
        print(render_markdown(comparison, candidates=False))
    if args.html:
        Path(args.html).write_text(render_html(comparison, candidates))
        print(f"wrote {args.html}")
    return 0
