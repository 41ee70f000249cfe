"""`servelab models`, `export` and `verify`: tables, exit codes, one-line user errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.cli import main
from lab.export import read_manifest
from lab.repository import ModelHandle

SKEWED_RUNNER = """
from lab.runners.onnxruntime import OnnxRuntimeRunner


class Skewed(OnnxRuntimeRunner):
    name = "skewed"

    def infer_impl(self, inputs):
        outputs = dict(super().infer_impl(inputs))
        outputs["embedding"] = outputs["embedding"] * 1.05  # a plausible-looking wrong answer
        return outputs
"""


def _servelab(repo_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SERVELAB_MODEL_REPOSITORY"}
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("servelab: error: ") and "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("runner", ["onnxruntime", "torch"])
def test_verify_encoder_passes_for_builtin_runners(
    runner: str, encoder_small: ModelHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", "--model", "encoder", "--runner", runner, "--batch-size", "16"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "on 64 samples: PASS" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["embedding", "PASS"] in [r[:2] for r in rows]
    assert ["logits", "PASS"] in [r[:2] for r in rows]


def test_verify_ranker_passes(
    ranker_small: ModelHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", "--model", "ranker", "--batch-size", "64"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "on 256 samples: PASS" in out and "max_abs_error" in out


def test_verify_with_a_wrong_runner_plugin_exits_1_and_shows_the_failing_output(
    repo_root: Path, tmp_path: Path, encoder_small: ModelHandle
) -> None:
    plugin = tmp_path / "skewed.py"
    plugin.write_text(SKEWED_RUNNER)
    result = _servelab(repo_root, "verify", "--model", "encoder", "--runner", f"{plugin}:Skewed")
    assert result.returncode == 1, result.stdout + result.stderr
    rows = [line.split()[:2] for line in result.stdout.splitlines() if line.strip()]
    assert ["embedding", "FAIL"] in rows and ["logits", "PASS"] in rows
    assert "would pass with atol" in result.stdout
    assert "Traceback" not in result.stderr
    assert "verify failed: reference set, batch 1; " in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "--model", "nope"], "no model 'nope'"),
        (["export", "encoder", "--size", "huge"], "model encoder has no size 'huge'"),
    ],
)
def test_unknown_model_or_size_is_one_line_and_exit_2(
    repo_root: Path, args: list[str], message: str
) -> None:
    result = _servelab(repo_root, *args)
    assert result.returncode == 2
    assert message in _one_line_error(result.stderr)


def test_bad_batch_size_is_a_usage_error(
    ranker_small: ModelHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "--model", "ranker", "--batch-size", "0"]) == 2
    assert "batch size must be at least 1" in _one_line_error(capsys.readouterr().err)
    assert main(["verify", "--model", "encoder", "--batch-size", "65"]) == 2
    assert "exceeds encoder's max_batch_size 64" in _one_line_error(capsys.readouterr().err)


def test_models_lists_sizes_and_exported_variants(
    encoder_small: ModelHandle, ranker_small: ModelHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "small*, base" in out and "small*, large" in out
    for handle in (encoder_small, ranker_small):
        manifest = read_manifest(handle)
        assert manifest is not None
        line = next(x for x in out.splitlines() if x.startswith(f"{handle.name}/small-fp32"))
        assert manifest["onnx_sha256"][:12] in line and "stale" not in line


def test_export_builds_once_then_reports_up_to_date(
    repo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models" / "encoder"
    models.mkdir(parents=True)
    for name in ("model.py", "config.toml"):
        shutil.copy(repo_root / "models" / "encoder" / name, models / name)
    repository = str(tmp_path / "models")
    assert main(["export", "encoder", "--model-repository", repository]) == 0
    out = capsys.readouterr().out
    assert "exported encoder small fp32" in out and "parity" in out
    assert (models / "1" / "small-fp32" / "model.onnx").is_file()
    assert main(["export", "encoder", "--model-repository", repository]) == 0
    assert "is up to date" in capsys.readouterr().out
