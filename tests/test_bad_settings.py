"""Bad settings fail at once with one line and a hint, before anything is measured."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lab.bench.run
import lab.bench.scenarios.server
from lab.bench.config import BenchConfig
from lab.bench.paths import check_output_file, check_output_folder
from lab.bench.run import run_bench
from lab.bench.selftest import NoopRunner, SyntheticWorkload, synthetic_handle
from lab.cli import main
from lab.errors import ConfigError
from lab.runners import create_runner
from lab.verify import precision_hint


def test_bad_output_fails_before_measuring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def measured(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("bench measured before checking --output")

    monkeypatch.setattr(lab.bench.run, "run_bench", measured)
    readme = tmp_path / "README.md"
    readme.write_text("not a folder\n")
    args = ["bench", "--model", "ranker", "--size", "small", "--output", f"{readme}/reports"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"servelab: error: --output {readme}/reports: {readme} is a file, not a folder\n"


def test_output_paths_are_checked_and_created(tmp_path: Path) -> None:
    assert check_output_folder(tmp_path / "a" / "b").is_dir()
    with pytest.raises(ConfigError, match="is a folder, give a file name"):
        check_output_file(tmp_path, "--html")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="--html .*file is a file, not a folder"):
        check_output_file(tmp_path / "file" / "c.html", "--html")


def test_compare_checks_its_output_before_reading_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    bad = str(tmp_path / "file" / "c.md")
    assert main(["compare", "missing.json", "--output", bad]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_unknown_runner_option_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="has no option 'bogus': valid options: provider, "):
        create_runner("onnxruntime", {"bogus": 1})
    # torch's constructor takes **options too: a misspelt one is not dropped silently
    with pytest.raises(ConfigError, match="has no option 'thread': valid options: .*threads"):
        create_runner("torch", {"thread": 2})


def test_runner_file_without_a_class_name_says_how_to_name_it() -> None:
    with pytest.raises(ConfigError, match=r"give my_runner.py:ClassName"):
        create_runner("my_runner.py")


def test_fp16_runner_options_hint_at_fp16_tolerances() -> None:
    hint = precision_hint({"dtype": "fp16", "threads": 2}, "fp32")
    assert hint is not None and "dtype=fp16" in hint and "--precision fp16" in hint
    assert precision_hint({"fp16": True}, "fp32") is not None
    assert precision_hint({"dtype": "fp16"}, "fp16") is None
    assert precision_hint({"dtype": "fp32"}, "fp32") is None


def test_an_absurd_qps_fails_at_once_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--model", "ranker", "--scenario", "server", "--qps", "1000000"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "qps 1e+06 is beyond what the load generator can issue" in err
    with pytest.raises(ConfigError, match="plans more than 4,000,000 arrivals"):
        BenchConfig.of(scenarios=["server"], qps=50_000.0, duration_s=600.0)


class SlowRunner(NoopRunner):
    """At most one sample per 2 ms: about 500 qps."""

    def infer_impl(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        time.sleep(0.002)
        return super().infer_impl(inputs)


def test_a_qps_beyond_what_the_target_serves_in_a_burst_is_refused() -> None:
    handle = synthetic_handle(max_batch_size=1, slo_ms=10.0)
    config = BenchConfig.of(
        model="synthetic", runner="slow", scenarios=["server"], qps=4000.0, duration_s=5.0,
        min_queries=10, warmup_queries=4, audit=False, replay_check=False, roofline=False,
        telemetry=False, max_queue_delay_us=0,
    )  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        run_bench(config, handle=handle, workload=SyntheticWorkload(), runner=SlowRunner())
    message = str(refused.value)
    assert message.startswith("--qps 4000 is beyond what this target can serve: a burst of 64")
    assert "use --scenario find-peak" in message


def test_a_schedule_too_large_to_prepare_is_refused_before_it_is_built() -> None:
    config = BenchConfig.of(
        model="synthetic", runner="noop", scenarios=["server"], qps=5000.0, duration_s=60.0,
        min_queries=10, warmup_queries=4, audit=False, replay_check=False, roofline=False,
        telemetry=False,
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"at 5000 qps for 60 s prepares 30\d,\d{3} queries \(about 6\d\d MB\)"
    ):
        run_bench(config, handle=synthetic_handle(), workload=SyntheticWorkload(),
                  runner=NoopRunner())  # fmt: skip


def test_a_server_run_that_cannot_keep_up_aborts_early_and_is_invalid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A target can be fast in a burst and still fall behind a steady rate: the burst
    # ceiling is out of the way here, the SLO watch is under test.
    monkeypatch.setattr(lab.bench.scenarios.server, "CEILING_SAFETY", 100.0)
    handle = synthetic_handle(max_batch_size=1, slo_ms=10.0)
    config = BenchConfig.of(
        model="synthetic", runner="slow", scenarios=["server"], qps=4000.0, duration_s=5.0,
        min_queries=10, warmup_queries=4, audit=False, replay_check=False, roofline=False,
        telemetry=False, max_queue_delay_us=0,
    )  # fmt: skip
    report = run_bench(config, handle=handle, workload=SyntheticWorkload(), runner=SlowRunner())
    (server,) = report["scenarios"]
    assert not report["verdict"]["valid"]
    (reason,) = [r for r in server["validity"]["reasons"] if "aborted after" in r]
    assert "missed the 10 ms SLO, so p99 cannot meet it" in reason
    assert server["queries"] < 4000 * 5.0 / 4  # stopped long before the schedule's end


def test_a_misspelt_flag_gets_a_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--qsp", "5"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err == "servelab: error: unrecognized arguments: --qsp 5 (did you mean --qps?)\n"
