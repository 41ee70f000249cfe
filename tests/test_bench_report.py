"""Reports: schema round trip, Markdown/HTML, compare, and the bench/compare commands."""

from __future__ import annotations

import copy
import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from lab.bench.compare import compare_reports, render_html, render_markdown
from lab.bench.config import BenchConfig, parse_concurrency
from lab.bench.histogram import LatencyHistogram
from lab.bench.provenance import provenance, sha256_files
from lab.bench.render import latency_cdf_plots, qps_plot, summary_table
from lab.bench.report import SCHEMA_VERSION, check_report, jsonable, load_report, write_reports
from lab.bench.run import run_bench
from lab.bench.schema import report_schema, validate
from lab.bench.selftest import NoopRunner, SyntheticWorkload, synthetic_handle
from lab.cli import main
from lab.errors import ConfigError
from lab.repository import ModelHandle


@pytest.fixture(scope="module")
def ranker_report(ranker_small: ModelHandle) -> dict[str, Any]:
    """A real report with every section: four scenarios, audits, roofline, replay check."""
    config = BenchConfig.of(
        model="ranker",
        size="small",
        scenarios=["single-stream", "offline", "server", "sweep"],
        qps=1000.0,
        duration_s=0.6,
        min_queries=700,
        warmup_queries=8,
        batch_size=64,
        concurrency="1,2",
        audit_count=8,
        replay_count=64,
        stability_tolerance=2.0,
    )
    return run_bench(config, handle=ranker_small)


def test_report_round_trips_through_its_schema(
    ranker_report: dict[str, Any], tmp_path: Path
) -> None:
    paths = write_reports(ranker_report, tmp_path)
    assert {p.suffix for p in paths.values()} == {".json", ".md", ".html"}
    assert (tmp_path / "latest.json").read_text() == paths[".json"].read_text()
    loaded = load_report(paths[".json"])
    assert loaded == jsonable(ranker_report)
    assert validate(loaded) == []
    assert loaded["schema_version"] == SCHEMA_VERSION
    # Histograms survive the trip exactly and merge.
    scenario = loaded["scenarios"][0]
    hist = LatencyHistogram.from_dict(scenario["histogram"])
    assert hist.count == scenario["latency"]["count"] == scenario["queries"]
    assert hist.percentile_ns(50) / 1e6 == pytest.approx(
        scenario["latency"]["percentiles"]["p50"]["ms"], abs=1e-6
    )


def test_report_carries_config_environment_and_verdicts(ranker_report: dict[str, Any]) -> None:
    r = ranker_report
    assert r["config"]["qps"] == 1000.0 and r["config"]["scenarios"][0] == "single-stream"
    assert r["environment"]["cpu"]["logical_cores"] >= 1
    assert r["environment"]["gpu"]["gpu"] == "no GPU"
    assert len(r["model"]["onnx_sha256"]) == 64 and len(r["model"]["weights_sha256"]) == 64
    assert r["model"]["public_seed"] == 2026
    assert {"onnxruntime", "numpy", "python"} <= set(r["environment"]["libraries"])
    assert r["roofline"]["work"]["flops_per_sample"] > 0
    assert r["roofline"]["ceilings"]["peak_flops_per_s"] > 0
    assert r["replay"]["fresh_queries"] == 64
    for scenario in r["scenarios"]:
        assert scenario["audit"]["passed"], scenario["audit"]
        assert scenario["metrics"] and all(
            m["direction"] in ("higher", "lower") for m in scenario["metrics"]
        )
    offline = r["scenarios"][1]
    assert offline["batch_size"]["max"] == 64 and offline["roofline"]["achieved_flops_per_s"] > 0
    assert [lvl["concurrency"] for lvl in r["scenarios"][3]["levels"]] == [1, 2]
    assert r["scenarios"][0]["telemetry"]["process_rss_bytes_max"] > 0


def test_schema_rejects_broken_reports(ranker_report: dict[str, Any]) -> None:
    good = jsonable(ranker_report)
    missing = copy.deepcopy(good)
    del missing["verdict"]
    assert "$: missing required key 'verdict'" in validate(missing)
    wrong = copy.deepcopy(good)
    wrong["scenarios"][0]["latency"]["percentiles"]["p99"]["ms"] = "fast"
    assert any("p99.ms: expected number or null" in e for e in validate(wrong))
    extra = copy.deepcopy(good)
    extra["scenarios"][0]["secret_sauce"] = 1
    assert any("unexpected key 'secret_sauce'" in e for e in validate(extra))
    future = copy.deepcopy(good)
    future["schema_version"] = "2.0"
    with pytest.raises(ConfigError, match="schema_version 2.0"):
        check_report(future)
    # The schema only uses keywords the validator implements.
    assert validate(good, report_schema()) == []


def test_markdown_html_and_summary_show_verdicts_and_plots(ranker_report: dict[str, Any]) -> None:
    from lab.bench.render import render_html as report_html
    from lab.bench.render import render_markdown as report_markdown

    markdown = report_markdown(jsonable(ranker_report))
    assert "| single-stream |" in markdown and "## Roofline" in markdown
    page = report_html(jsonable(ranker_report))
    assert page.count("<svg") >= 6  # 4 CDFs, QPS vs p99, throughput vs concurrency
    assert "<pre>" not in page and "<h3>Roofline</h3>" in page  # details as HTML, not text
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    cdfs = latency_cdf_plots(jsonable(ranker_report))
    assert len(cdfs) == 4  # one per scenario: seconds and milliseconds never share an axis
    for cdf in cdfs:
        ET.fromstring(cdf)  # well-formed SVG
    assert "single-stream: latency CDF" in cdfs[0] and ">p90<" in cdfs[0] and "SLO 60 ms" in cdfs[0]
    plot = qps_plot(jsonable(ranker_report))
    assert plot is not None and "SLO 60 ms" in plot
    table = summary_table(jsonable(ranker_report))
    assert "verdict:" in table and "sweep c=2" in table


def test_headline_comes_first_with_each_rule_and_the_primary_metric_beside_its_slo(
    ranker_report: dict[str, Any],
) -> None:
    from lab.bench.render import render_html as report_html
    from lab.bench.render import render_markdown as report_markdown

    report = jsonable(ranker_report)
    table = summary_table(report)
    assert table.startswith("verdict: ")
    assert "single-stream: latency_p90_ms " in table and "(SLO 60 ms on server p99)" in table
    assert "satisfied: min duration " in table and "p90 claim " in table
    assert "server: latency_p99_ms" in table and "p99 within SLO " in table
    assert "replay check (caching) satisfied: yes" in table
    markdown = report_markdown(report)
    assert markdown.index("## Headline") < markdown.index("## Results")
    page = report_html(report)
    assert page.index('class="headline"') < page.index("<table")


def test_report_markdown_becomes_html_tables_lists_and_paragraphs() -> None:
    from lab.bench.markdown_html import markdown_to_html

    converted = markdown_to_html(
        "## Roofline\n\n- work: **3** <MFLOP>\n- `x`\n\n| a | b |\n|---|---|\n| 1 | 2 |\ntext"
    )
    assert converted == (
        "<h2>Roofline</h2>\n<ul><li>work: <strong>3</strong> &lt;MFLOP&gt;</li>"
        "<li><code>x</code></li></ul>\n<table><thead><tr><th>a</th><th>b</th></tr></thead>"
        "<tbody><tr><td>1</td><td>2</td></tr></tbody></table>\n<p>text</p>"
    )


def _quiet(report: dict[str, Any]) -> dict[str, Any]:
    """A VALID copy measured as if nothing else ran.

    The compare tests check compare's logic; the fixture itself may run on a busy machine
    (CI beside other jobs), where the server scenario can miss its SLO and telemetry sees the
    other processes. Neither is what these tests are about.
    """
    quiet = copy.deepcopy(jsonable(report))
    quiet["verdict"].update(valid=True, reasons=[])
    for scenario in quiet["scenarios"]:
        if scenario.get("telemetry"):
            scenario["telemetry"]["other_processes_cpu_cores_mean"] = 0.0
    return quiet


def _doctored(report: dict[str, Any], factor: float) -> dict[str, Any]:
    """A copy whose latencies are `factor` times longer and throughput `factor` lower."""
    other = _quiet(report)
    for scenario in other["scenarios"]:
        for metric in scenario["metrics"]:
            scale = factor if metric["direction"] == "lower" else 1 / factor
            if metric["value"] is not None:
                metric["value"] *= scale
            if metric["ci"]:
                metric["ci"] = [c * scale for c in metric["ci"]]
    return other


def test_compare_says_within_noise_for_the_same_result(ranker_report: dict[str, Any]) -> None:
    a = _quiet(ranker_report)
    comparison = compare_reports([a, _doctored(a, 1.03)], ["a", "b"])
    assert comparison.primary_within_noise
    assert comparison.verdict().startswith("within noise")


def test_compare_names_primary_metrics_missing_from_a_report(
    ranker_report: dict[str, Any],
) -> None:
    a = _quiet(ranker_report)
    b = copy.deepcopy(a)
    dropped = b["scenarios"].pop(0)["scenario"]  # single-stream: primary metric p90
    verdict = compare_reports([a, b], ["a", "b"]).verdict()
    assert verdict.startswith("within noise where both were measured; not in every report")
    assert dropped in verdict


def test_compare_flags_a_real_difference_and_orients_ratios(ranker_report: dict[str, Any]) -> None:
    a = _quiet(ranker_report)
    comparison = compare_reports([a, _doctored(a, 2.0)], ["a", "slow"])
    assert comparison.verdict().startswith("differs beyond noise")
    assert "single-stream latency_p90_ms: a is better than slow, 2.00x [" in comparison.verdict()
    p90 = next(r for r in comparison.rows if r.name == "latency_p90_ms")
    assert p90.ratios[1] == pytest.approx(0.5)  # < 1: worse than the first report
    assert p90.within_noise[1] is False
    (decision,) = [d for d in comparison.decisions() if d.metric == "latency_p90_ms"]
    assert decision.better == "a" and decision.factor == pytest.approx(2.0)
    assert decision.interval is not None and decision.interval[0] <= 2.0 <= decision.interval[1]
    markdown = render_markdown(comparison)
    assert markdown.index("Correctness and validity") < markdown.index("## Metrics")
    assert "<table>" in render_html(comparison)


def test_compare_puts_validity_first_and_warns_about_environments(
    ranker_report: dict[str, Any],
) -> None:
    a = _quiet(ranker_report)
    b = copy.deepcopy(a)
    b["model"]["onnx_sha256"] = "0" * 64
    b["environment"]["gpu"] = {
        "gpu": [{"index": 0, "name": "NVIDIA H100", "memory_total_bytes": 1}],
        "driver": "570",
    }
    b["verdict"] = {
        "valid": False,
        "audit_passed": False,
        "replay_passed": True,
        "reasons": ["server: audit failed"],
    }
    comparison = compare_reports([a, b], ["a", "b"])
    assert comparison.verdict().startswith("not comparable as results: INVALID report(s): b")
    text = " | ".join(comparison.warnings)
    assert "different model hash" in text and "different GPU: NVIDIA H100" in text
    b["scenarios"][0]["telemetry"]["other_processes_cpu_cores_mean"] = 0.9
    b["roofline"]["ceilings"]["peak_flops_per_s"] = (
        a["roofline"]["ceilings"]["peak_flops_per_s"] / 2
    )
    text = " | ".join(compare_reports([a, b], ["a", "b"]).warnings)
    assert "b: other processes used 0.90 CPU cores on average during single-stream" in text
    assert "b: measured peak FLOP/s is 0.50x that of a" in text
    assert "other processes" not in " | ".join(compare_reports([a, a], ["a", "a2"]).warnings)


def test_compare_refuses_different_models_unless_forced(
    ranker_report: dict[str, Any], tmp_path: Path, capsys
) -> None:
    ranker = _quiet(ranker_report)
    encoder = copy.deepcopy(ranker)
    encoder["model"]["name"] = "encoder"
    paths = [tmp_path / "ranker.json", tmp_path / "encoder.json"]
    for path, report in zip(paths, (ranker, encoder)):
        path.write_text(json.dumps(report))
    assert main(["compare", *map(str, paths)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refusing to compare different workloads" in err
    assert "encoder is encoder small fp32" in err and "--force" in err
    assert main(["compare", *map(str, paths), "--force"]) == 0
    assert "different workload (forced)" in capsys.readouterr().out


def test_compare_lists_configuration_differences_that_change_results(
    ranker_report: dict[str, Any],
) -> None:
    a = _quiet(ranker_report)
    b = copy.deepcopy(a)
    b["config"]["batching"]["max_queue_delay_us"] = 0
    b["targets"]["candidate"]["max_queue_delay_us"] = 0
    b["config"]["report"]["output"] = "elsewhere"  # where a report goes changes nothing
    differences = compare_reports([a, b], ["a", "b"]).differences
    assert "b: batching.max_queue_delay_us = 0 (vs default in a)" in differences
    assert any(
        d.startswith("b: effective batcher max_queue_delay_us = 0 (vs ") for d in differences
    )
    assert not any("output" in d for d in differences)
    assert "## Configuration differences" in render_markdown(compare_reports([a, b], ["a", "b"]))


def test_compare_does_not_blame_the_machine_for_ceilings_of_another_framework(
    ranker_report: dict[str, Any],
) -> None:
    a = _quiet(ranker_report)
    b = copy.deepcopy(a)
    b["roofline"]["ceilings"]["framework"] = "torch"
    b["roofline"]["ceilings"]["peak_bytes_per_s"] *= 1.85
    text = " | ".join(compare_reports([a, b], ["a", "b"]).warnings)
    assert "the machine (or its load) differed" not in text
    assert "b: ceilings measured with torch on cpu" in text and "not compared" in text


def test_untracked_plugin_marks_the_report_dirty_and_records_its_hash(tmp_path: Path) -> None:
    plugin = tmp_path / "my_runner.py"
    plugin.write_text("from lab.runners.onnxruntime import OnnxRuntimeRunner as Mine\n")
    settings = tmp_path / "settings.toml"
    settings.write_text("duration_s = 1.0\n")
    block = provenance(
        {"candidate": f"{plugin}:Mine", "baseline": "onnxruntime"},
        ["servelab", "bench", "--config", str(settings)],
        str(settings),
    )
    source = block["runners"]["candidate"]
    assert source["kind"] == "file" and source["committed"] is not True
    assert source["sha256"] == sha256_files([plugin.resolve()], tmp_path.resolve())
    assert any(f"{plugin.resolve()} is not committed" in r for r in block["dirty_reasons"])
    assert block["runners"]["baseline"]["kind"] == "builtin"
    assert block["settings_file"]["content"] == "duration_s = 1.0\n"
    assert block["command"][-1] == str(settings)
    plugin.write_text("from lab.runners.onnxruntime import OnnxRuntimeRunner as Mine  # v2\n")
    changed = provenance({"candidate": f"{plugin}:Mine"})["runners"]["candidate"]["sha256"]
    assert changed != source["sha256"]


def test_bench_and_compare_commands(ranker_small: ModelHandle, tmp_path: Path, capsys) -> None:
    plugin = tmp_path / "my_runner.py"
    plugin.write_text(
        textwrap.dedent(
            """
            from lab.runners.onnxruntime import OnnxRuntimeRunner

            class Mine(OnnxRuntimeRunner):
                name = "mine"
            """
        )
    )
    args = [
        "bench", "--model", "ranker", "--size", "small", "--runner", f"{plugin}:Mine",
        "--scenario", "single-stream", "--duration-s", "0.4", "--min-queries", "64",
        "--audit-count", "8", "--replay-count", "48", "--no-roofline", "--no-progress",
        "--stability-tolerance", "5", "--output", str(tmp_path / "reports"), "--name", "cli",
    ]  # fmt: skip
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verdict: VALID" in out and "wrote" in out
    report = load_report(tmp_path / "reports" / "latest.json")
    assert report["targets"]["candidate"]["runner"]["class"] == "Mine"
    assert report["targets"]["candidate"]["runner"]["isolation"] == "process"
    assert report["isolation"]["mode"] == "process" and report["isolation"]["worker"]["pid"]
    assert report["name"] == "cli"
    assert report["provenance"]["command"] == ["servelab", *args]
    assert report["provenance"]["runners"]["candidate"]["sha256"] == sha256_files(
        [plugin.resolve()], tmp_path.resolve()
    )
    assert report["environment"]["git"]["dirty"] is True  # the plugin is not committed
    latest = str(tmp_path / "reports" / "latest.json")
    assert main(["compare", latest, latest, "--html", str(tmp_path / "c.html")]) == 0
    out = capsys.readouterr().out
    assert "within noise" in out and (tmp_path / "c.html").read_text().startswith("<!DOCTYPE html>")


def test_bench_user_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["bench", "--scenario", "server", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        "servelab: error: the server scenario needs --qps (or use find-peak to search for it)"
    )
    config = tmp_path / "bench.toml"
    config.write_text("duration-s = 1\nwarp-speed = true\n")
    assert main(["bench", "--config", str(config)]) == 2
    assert "unknown setting(s) warp_speed" in capsys.readouterr().err
    assert main(["bench", "--concurrency", "fast"]) == 2
    assert "start:end:step" in capsys.readouterr().err
    not_a_report = tmp_path / "x.json"
    not_a_report.write_text(json.dumps({"hello": 1}))
    assert main(["compare", str(not_a_report)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "schema_version none" in err


def test_config_file_is_overridden_by_flags(tmp_path: Path) -> None:
    from lab.bench.cli import config_from_args
    from lab.cli import build_parser

    config = tmp_path / "bench.json"
    config.write_text(
        json.dumps({"model": "ranker", "duration_s": 2, "qps": 50, "scenarios": ["server"]})
    )
    args = build_parser().parse_args(["bench", "--config", str(config), "--qps", "75"])
    parsed = config_from_args(args)
    assert (parsed.model, parsed.duration_s, parsed.qps, parsed.scenarios) == (
        "ranker",
        2,
        75.0,
        ["server"],
    )
    main_job = config_from_args(build_parser().parse_args(["bench", "--main-job"]))
    assert main_job.scenarios == ["single-stream", "find-peak", "offline"]


def test_config_file_takes_group_tables_and_flat_keys(tmp_path: Path) -> None:
    from lab.bench.cli import config_from_args
    from lab.cli import build_parser

    config = tmp_path / "bench.toml"
    config.write_text(
        "duration-s = 2\naudit_count = 8\n[batching]\nmax-batch-size = 16\n"
        "[report]\nname = 'grouped'\nhtml = false\n"
    )
    args = build_parser().parse_args(["bench", "--config", str(config), "--audit-count", "4"])
    parsed = config_from_args(args)
    assert parsed.duration_s == 2 and parsed.batching.max_batch_size == 16
    assert parsed.checks.audit_count == 4  # the flag beats the file's flat key
    assert (parsed.report.name, parsed.report.html) == ("grouped", False)
    assert parsed.to_dict()["checks"]["audit_count"] == 4
    assert BenchConfig.from_mapping(parsed.to_dict()) == parsed  # the report's config reads back
    with pytest.raises(ConfigError, match="unknown setting.*batching.audit_count"):
        BenchConfig.from_mapping({"batching": {"audit_count": 3}})
    with pytest.raises(ConfigError, match="audit_count is set twice"):
        BenchConfig.from_mapping({"audit_count": 3, "checks": {"audit-count": 4}})


def test_every_bench_flag_is_derived_and_keeps_its_name(capsys) -> None:
    from lab.cli import build_parser

    old_flags = [
        "--target", "--scenario", "--qps", "--duration-s", "--min-queries", "--warmup-queries",
        "--max-batch-size", "--max-queue-delay-us", "--preferred-batch-size", "--batch-size",
        "--concurrency", "--remote-concurrency", "--baseline", "--baseline-option", "--rounds",
        "--audit-fraction", "--audit-count", "--no-audit", "--replay-count",
        "--replay-tolerance", "--no-replay-check", "--seed", "--slo-ms", "--stability-windows",
        "--stability-tolerance", "--find-peak-step-s", "--find-peak-tolerance",
        "--find-peak-max-steps", "--final-duration-s", "--no-roofline", "--no-telemetry",
        "--timeout-s", "--output", "--name", "--no-html", "--main-job", "--no-progress",
        "--config",
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    text = capsys.readouterr().out
    assert [f for f in old_flags if f not in text] == []
    args = build_parser().parse_args(
        ["bench", "--preferred-batch-size", "4", "--preferred-batch-size", "8", "--no-audit",
         "--baseline-option", "a=1", "--scenario", "offline", "--scenario", "sweep"]
    )  # fmt: skip
    from lab.bench.cli import config_from_args

    parsed = config_from_args(args)
    assert parsed.batching.preferred_batch_sizes == [4, 8] and parsed.checks.audit is False
    assert parsed.baseline_options == {"a": 1} and parsed.scenarios == ["offline", "sweep"]
    assert "(default 10)" in text and "(default: the model's)" in text


def test_concurrency_ranges() -> None:
    assert parse_concurrency("1:8:2") == [1, 3, 5, 7]
    assert parse_concurrency("2:4") == [2, 3, 4]
    assert parse_concurrency("1,2,16") == [1, 2, 16]
    with pytest.raises(ConfigError, match="no levels"):
        parse_concurrency("0")


@pytest.mark.slow
def test_find_peak_brackets_a_known_capacity() -> None:
    """A runner that takes 2 ms per batch of at most 4 can serve at most 2000 queries/s."""
    import time

    class Capacity(NoopRunner):
        def infer_impl(self, inputs):  # type: ignore[no-untyped-def]
            time.sleep(0.002)
            return super().infer_impl(inputs)

    handle = synthetic_handle(max_batch_size=4, slo_ms=40.0)
    config = BenchConfig.of(
        model="synthetic", runner="capacity", scenarios=["find-peak"], qps=300.0,
        duration_s=0.5, min_queries=10, warmup_queries=4, find_peak_step_s=0.3,
        find_peak_max_steps=6, find_peak_tolerance=0.25, audit=False, replay_check=False,
        roofline=False, telemetry=False, max_queue_delay_us=0, stability_tolerance=5.0,
    )  # fmt: skip
    report = run_bench(config, handle=handle, workload=SyntheticWorkload(), runner=Capacity())
    result = report["scenarios"][0]
    steps = result["find_peak"]["steps"]
    valid = [s["qps"] for s in steps if s["valid"]]
    invalid = [s["qps"] for s in steps if not s["valid"]]
    assert valid and invalid
    assert max(valid) < min(invalid)  # a monotone search: a bracket, not a scatter
    assert max(valid) <= 2000 * 1.05  # beyond capacity the queue grows without bound
    assert result["find_peak"]["final_attempts"]
    assert result["queries"] >= 700  # the confirming run can claim p99
    assert validate(jsonable(report)) == []
    from lab.bench.render import find_peak_lines

    explained = "\n".join(find_peak_lines(jsonable(result)))
    assert "| search step |" in explained and "| confirming run |" in explained
    assert "exceeds the SLO of 40 ms" in explained and "met every rule" in explained


def test_candidate_view_ranks_valid_reports_first_then_by_primary_metrics(
    ranker_report: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lab.bench.candidates import candidate_rows, from_bench_report, rank_candidates

    a = _quiet(ranker_report)
    invalid_fastest = _doctored(a, 0.25)
    invalid_fastest["verdict"].update(valid=False, reasons=["server: p99 over the SLO"])
    reports = {
        "slow": _doctored(a, 2.0),
        "invalid": invalid_fastest,
        "a": a,
        "same": _doctored(a, 1.03),
        "fast": _doctored(a, 0.5),
    }
    ranking = rank_candidates([from_bench_report(n, r) for n, r in reports.items()])
    assert [c.name for c in ranking.candidates] == ["fast", "a", "same", "slow", "invalid"]
    rows = candidate_rows(ranking)
    assert rows[0][:3] == ["rank", "candidate", "verdict"]
    assert "single-stream latency_p90_ms (ms, lower is better)" in rows[0]
    assert rows[5][2] == "INVALID: server: p99 over the SLO"
    p90 = rows[0].index("single-stream latency_p90_ms (ms, lower is better)")
    assert [row[p90].split()[-1] for row in rows[1:]] == ["#1", "#2", "#3", "#4", "#5"]
    pair = rank_candidates([from_bench_report("a", a), from_bench_report("same", reports["same"])])
    assert candidate_rows(pair)[2][p90].endswith("#2 (~#1)")  # 3% apart: within noise
    paths = []
    for name, report in reports.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(report))
        paths.append(str(path))
    assert main(["compare", *paths, "--output", str(tmp_path / "c.md")]) == 0
    console = capsys.readouterr().out
    assert console.startswith("Candidates, best first:\n\n1. fast  VALID\n")
    assert console.index("4. slow") < console.index("5. invalid  INVALID")
    markdown = (tmp_path / "c.md").read_text()
    assert markdown.index("## Candidates (ranked)") < markdown.index("## Correctness and validity")


def test_html_draws_the_baseline_beside_the_candidate_and_shows_telemetry(
    tmp_path: Path,
) -> None:
    from lab.bench.render import render_html as report_html

    config = BenchConfig.of(
        model="synthetic", runner="noop", baseline="noop", scenarios=["single-stream"],
        duration_s=0.3, min_queries=64, warmup_queries=4, audit=False, replay_check=False,
        roofline=False, stability_tolerance=1.0,
    )  # fmt: skip
    report = run_bench(config, handle=synthetic_handle(), workload=SyntheticWorkload(),
                       runner=NoopRunner(), baseline_runner=NoopRunner())  # fmt: skip
    report = load_report(write_reports(report, tmp_path)[".json"])
    (scenario,) = report["scenarios"]
    assert scenario["baseline"]["histogram"]["count"] == scenario["baseline"]["queries"]
    series = scenario["telemetry"]["series"]
    assert len(series["t_s"]) == len(series["process_cpu_percent"]) >= 1
    (cdf,) = latency_cdf_plots(report)
    ET.fromstring(cdf)
    assert ">single-stream (candidate)<" in cdf and ">baseline noop<" in cdf
    page = report_html(report)
    assert "<h2>Telemetry</h2>" in page and "harness + workers CPU" in page
    # A 1.3 report (no baseline histogram, no telemetry samples) still reads and renders.
    old = copy.deepcopy(report)
    old["schema_version"] = "1.3"
    del old["scenarios"][0]["baseline"]["histogram"], old["scenarios"][0]["telemetry"]["series"]
    check_report(old)
    (cdf,) = latency_cdf_plots(old)
    assert "baseline" not in cdf and "<h2>Telemetry</h2>" in report_html(old)


def test_qps_plot_uses_log_axes_when_values_span_decades() -> None:
    steps = [
        {"qps": q, "p99_ms": p, "valid": p < 130}
        for q, p in ((10, 3.0), (100, 5.0), (200, 40.0), (400, 2400.0))
    ]
    report = {
        "slo_ms": 130.0,
        "scenarios": [
            {"scenario": "find-peak", "find_peak": {"steps": steps}, "target_qps": 100.0,
             "latency": {"percentiles": {"p99": {"ms": 6.0}}}},
        ],
    }  # fmt: skip
    plot = qps_plot(report)
    assert plot is not None
    ET.fromstring(plot)
    assert "target QPS (log scale)" in plot and "p99 latency (ms, log scale)" in plot
    assert ">1,000<" in plot and ">1<" in plot  # decade ticks from 1 ms to 10 s
    assert "drawn at the top" not in plot  # nothing clipped on a log axis
    for step in steps:  # 3 .. 9 ms: within a decade, a linear axis
        step["p99_ms"] = min(step["p99_ms"], 9.0)
    linear = qps_plot({**report, "slo_ms": 10.0})
    assert linear is not None and "p99 latency (ms)<" in linear
