"""`BenchConfig`: everything that shapes a bench run, grouped, each field with its CLI help.

Top-level fields say what is measured, against what and for how long; the groups say how
the in-process target batches (`batching`), what is checked besides timing (`checks`: the
audit and the replay check), how find-peak searches (`find_peak`) and what the report
carries (`report`) and where the runner runs (`worker`). Field names are unique across the groups, so a settings file may use
flat keys (`audit_count = 8`, as before the grouping) or group tables (`[checks]` then
`audit_count = 8`), and `servelab bench` derives one flag per field from the metadata
here (lab.bench.flags): the flag is the kebab-case of the field name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from lab.errors import ConfigError
from lab.isolation import ISOLATION_MODES, LOAD_TIMEOUT_S, WORKER_TIMEOUT_S

MAIN_JOB_SCENARIOS = ("single-stream", "find-peak", "offline")
# One Python issuing thread cannot issue faster than this: a higher --qps measures the load
# generator, not the target, and its schedule alone would take gigabytes.
MAX_QPS = 100_000.0
MAX_OPEN_LOOP_QUERIES = 4_000_000  # a server run's planned arrivals (bounded memory)


def setting(
    default: Any = None,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    shown: str | None = None,
    cli: bool = True,
    metavar: str | None = None,
    choices: Callable[[], Sequence[str]] | None = None,
) -> Any:
    """A config field with its CLI help (for a boolean that defaults to True, a noun:
    `--no-audit` reads "no <help>"). `shown` replaces the default in the help text
    (e.g. "the model's" for None); `cli=False` marks fields whose flags live in
    lab/cliargs.py; `choices` is called when the flags are built."""
    metadata = {"help": help, "shown": shown, "cli": cli, "metavar": metavar, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def scenario_names() -> tuple[str, ...]:
    # Imported here: the scenario modules import this module for their settings.
    from lab.bench.scenarios import SCENARIOS

    return tuple(SCENARIOS)


@dataclass
class BatchingConfig:
    """How the in-process target batches (the dynamic batcher; offline's batch size)."""

    max_batch_size: int | None = setting(None, "batcher limit", shown="the model's")
    max_queue_delay_us: int | None = setting(None, "batcher delay", shown="the model's")
    preferred_batch_sizes: list[int] | None = setting(
        None, "preferred batcher batch size, repeatable", shown="the model's"
    )
    batch_size: int | None = setting(
        None, "offline batch size", shown="the model's smallest preferred batch size"
    )

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch-size must be at least 1")


@dataclass
class ChecksConfig:
    """Correctness inside the timed run: the TEST01 audit and the TEST04 replay check."""

    audit: bool = setting(True, "audit of a random share of the timed outputs")
    audit_fraction: float = setting(0.05, "share of timed queries audited (16..128 of them)")
    audit_count: int | None = setting(None, "audit exactly this many samples")
    replay_check: bool = setting(
        True, "replay check (flags a target that answers repeated samples faster)"
    )
    replay_count: int = setting(64, "replay-check samples")
    replay_tolerance: float = setting(0.25, "flag replays this much faster (0.25: 25%)")

    def __post_init__(self) -> None:
        if not 0 <= self.audit_fraction <= 1:
            raise ConfigError(f"audit-fraction must lie in [0, 1], got {self.audit_fraction}")
        if self.audit_count is not None and self.audit_count < 1:
            raise ConfigError("audit-count must be at least 1")


@dataclass
class FindPeakConfig:
    """The find-peak search: short bracketing steps, then a full-length confirming run."""

    find_peak_step_s: float = setting(3.0, "duration of each search step")
    find_peak_tolerance: float = setting(0.10, "stop bisecting when the bracket is this narrow")
    find_peak_max_steps: int = setting(10, "at most this many search steps")
    final_duration_s: float | None = setting(
        None, "the server run at the found peak", shown="--duration-s"
    )

    def __post_init__(self) -> None:
        if not self.find_peak_step_s > 0:
            raise ConfigError(f"find-peak-step-s must be positive, got {self.find_peak_step_s}")


@dataclass
class WorkerConfig:
    """Where the runner runs: its own worker process (the default) or this one."""

    isolation: str = setting(
        "process",
        "process: the runner runs in a worker process, apart from the clocks, references and "
        "checker; none: in this process (debugging only; the verdict warns)",
        choices=lambda: ISOLATION_MODES,
    )
    load_timeout_s: float = setting(LOAD_TIMEOUT_S, "longest the runner's load() may take")
    worker_timeout_s: float = setting(
        WORKER_TIMEOUT_S, "a batch unanswered this long means the worker hung (it is killed)"
    )

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATION_MODES:
            raise ConfigError(
                f"unknown isolation {self.isolation!r}: choose from {', '.join(ISOLATION_MODES)}"
            )
        if not self.load_timeout_s > 0 or not self.worker_timeout_s > 0:
            raise ConfigError("load-timeout-s and worker-timeout-s must be positive")


@dataclass
class ReportConfig:
    """What the report carries and where it goes."""

    output: str = setting("reports", "report folder")
    name: str | None = setting(None, "report name", shown="model-size-runner")
    html: bool = setting(True, "HTML page with plots")
    roofline: bool = setting(True, "roofline (work from the ONNX graph, measured ceilings)")
    telemetry: bool = setting(True, "telemetry (process CPU and RSS, other processes' CPU, GPU)")


@dataclass
class BenchConfig:
    """Everything that shapes a run. CLI flags are the kebab-case of the field names."""

    model: str = setting("encoder", "model name", cli=False)
    size: str | None = setting(None, "model size", cli=False)
    precision: str = setting("fp32", "exported precision", cli=False)
    model_repository: str | None = setting(None, "model repository folder", cli=False)
    runner: str = setting("onnxruntime", "the runner measured", cli=False)
    runner_options: dict[str, Any] = setting(help="runner options", factory=dict, cli=False)
    target: str = setting(
        "inprocess",
        "inprocess (the runner behind a dynamic batcher) or http://host:port / "
        "grpc://host:port (a server speaking the Open Inference Protocol)",
    )
    scenarios: list[str] = setting(
        help="repeatable",
        factory=lambda: ["single-stream"],
        shown=f"single-stream; main job: {', '.join(MAIN_JOB_SCENARIOS)}",
        choices=scenario_names,
    )
    qps: float | None = setting(None, "server arrival rate (queries/s)")
    duration_s: float = setting(10.0, "minimum timed duration per scenario")
    min_queries: int = setting(1024, "minimum queries per scenario")
    warmup_queries: int = setting(32, "unmeasured warm-up queries")
    concurrency: str = setting("1:4:1", "sweep levels, start:end:step or 1,2,4")
    remote_concurrency: int = setting(64, "requests in flight to a remote target")
    baseline: str | None = setting(
        None,
        "also measure this runner, alternating with the candidate, and report the speed-up",
        metavar="RUNNER",
    )
    baseline_options: dict[str, Any] = setting(
        help="option for the baseline runner, repeatable", factory=dict, metavar="KEY=VALUE"
    )
    rounds: int = setting(2, "candidate/baseline alternations")
    seed: int | None = setting(
        None,
        "workload seed; a report's recorded seed reproduces its samples",
        shown="fresh from OS randomness, or public+secret with SERVELAB_SECRET_SEED",
    )
    slo_ms: float | None = setting(None, "p99 bound", shown="the model's")
    stability_windows: int = setting(5, "windows the minimum duration is cut into")
    stability_tolerance: float = setting(0.15, "how far the last 3 windows may differ")
    timeout_s: float = setting(
        60.0, "per query; open loop: give up when no query completed for this long"
    )
    main_job: bool = setting(False, "what `make bench` runs")
    batching: BatchingConfig = setting(help="batching", factory=BatchingConfig, cli=False)
    checks: ChecksConfig = setting(help="checks", factory=ChecksConfig, cli=False)
    find_peak: FindPeakConfig = setting(help="find-peak", factory=FindPeakConfig, cli=False)
    report: ReportConfig = setting(help="report", factory=ReportConfig, cli=False)
    worker: WorkerConfig = setting(help="runner worker", factory=WorkerConfig, cli=False)

    def __post_init__(self) -> None:
        known = scenario_names()
        unknown = [s for s in self.scenarios if s not in known]
        if unknown:
            raise ConfigError(f"unknown scenario {unknown[0]!r}: choose from {', '.join(known)}")
        if not self.scenarios:
            raise ConfigError("at least one scenario is needed")
        positive = {
            "duration_s": self.duration_s,
            "rounds": self.rounds,
            "stability_windows": self.stability_windows,
            "timeout_s": self.timeout_s,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{key.replace('_', '-')} must be positive, got {value}")
        if self.min_queries < 1 or self.warmup_queries < 0:
            raise ConfigError("min-queries must be >= 1 and warmup-queries >= 0")
        if self.qps is not None and self.qps <= 0:
            raise ConfigError(f"qps must be positive, got {self.qps}")
        if self.qps is not None and self.qps > MAX_QPS:
            raise ConfigError(
                f"qps {self.qps:g} is beyond what the load generator can issue (at most "
                f"{MAX_QPS:,.0f} qps from one process): use find-peak to search for the peak"
            )
        if self.qps is not None and self.qps * self.duration_s * 1.5 > MAX_OPEN_LOOP_QUERIES:
            raise ConfigError(
                f"qps {self.qps:g} for {self.duration_s:g} s plans more than "
                f"{MAX_OPEN_LOOP_QUERIES:,} arrivals: shorten --duration-s"
            )
        if "server" in self.scenarios and self.qps is None:
            raise ConfigError("the server scenario needs --qps (or use find-peak to search for it)")
        if self.stability_tolerance <= 0:
            raise ConfigError("stability-tolerance must be positive")
        parse_concurrency(self.concurrency)

    def to_dict(self) -> dict[str, Any]:
        """Top-level fields and one nested dict per group (the report's `config`)."""
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "config") -> BenchConfig:
        """From flat keys, group tables or both (snake_case or kebab-case keys)."""
        flat = flat_settings(data, where)
        groups = group_types()
        top = {k: v for k, v in flat.items() if k not in _group_of()}
        nested = {
            name: {k: v for k, v in flat.items() if _group_of().get(k) == name} for name in groups
        }
        try:
            return cls(**top, **{name: kind(**nested[name]) for name, kind in groups.items()})
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @classmethod
    def of(cls, **settings: Any) -> BenchConfig:
        """`BenchConfig.of(model="ranker", audit=False)`: keywords as in a settings file."""
        return cls.from_mapping(settings, "settings")


def group_types() -> dict[str, type]:
    """{"batching": BatchingConfig, ...}: the BenchConfig fields that are groups."""
    return {
        f.name: f.default_factory  # type: ignore[misc]
        for f in fields(BenchConfig)
        if callable(f.default_factory) and is_dataclass(f.default_factory)
    }


def _group_of() -> dict[str, str]:
    """Field name -> the group it belongs to (top-level fields are absent)."""
    return {f.name: name for name, kind in group_types().items() for f in fields(kind)}


def flat_settings(data: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """Flat snake_case settings from flat keys and/or group tables; unknown keys and a key
    set twice are errors."""
    groups, owner = group_types(), _group_of()
    top = {f.name for f in fields(BenchConfig)} - set(groups)
    flat: dict[str, Any] = {}
    unknown: list[str] = []

    def put(key: str, value: Any) -> None:
        if key in flat:
            raise ConfigError(f"{where}: {key} is set twice")
        flat[key] = value

    for raw, value in data.items():
        key = str(raw).replace("-", "_")
        if key in groups:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {key} must be a table of settings")
            for raw_sub, sub_value in value.items():
                sub = str(raw_sub).replace("-", "_")
                if owner.get(sub) == key:
                    put(sub, sub_value)
                else:
                    unknown.append(f"{key}.{sub}")
        elif key in top or key in owner:
            put(key, value)
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    return flat


def parse_concurrency(text: str) -> list[int]:
    """ "1:8:2" -> [1, 3, 5, 7] (start:end:step, end included); "1,2,4" -> [1, 2, 4]."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) == 2:
                parts.append(1)
            start, end, step = parts
            levels = list(range(start, end + 1, step))
        else:
            levels = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(
            f"concurrency {text!r} must look like start:end:step or a list like 1,2,4"
        ) from None
    if not levels or any(c < 1 for c in levels):
        raise ConfigError(f"concurrency {text!r} gives no levels >= 1")
    return levels
