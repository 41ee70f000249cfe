"""lab.dist with real torch.distributed: gloo ranks in real processes, started by torchrun the
way users start them (DistRunner and `servelab bench --dist` / `servelab dist` print and run
the torchrun line). NCCL paths are not exercised here (no GPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lab.bench.histogram import LatencyHistogram
from lab.check import Checker
from lab.dist.comm import split_evenly
from lab.dist.engines import TensorEngine, place_tables
from lab.dist.launch import LaunchSpec, torchrun_command
from lab.dist.runner import MARGIN_S, DistRunner
from lab.errors import ConfigError, WorkerLost
from lab.repository import ModelHandle
from lab.runners import parse_options
from lab.verify import verify_runner
from lab.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="memfd and SCM_RIGHTS: Linux")


# ----- no processes ------------------------------------------------------------------------------
def test_torchrun_line_single_and_multi_node() -> None:
    one = torchrun_command(LaunchSpec(3), "lab.dist.rank", ["--mode", "shard"])
    assert one[1:3] == ["-m", "torch.distributed.run"]
    assert one[one.index("--nproc-per-node") + 1] == "3"
    assert one[one.index("--rdzv-backend") + 1] == "c10d"
    assert one[one.index("--rdzv-endpoint") + 1].startswith("127.0.0.1:")
    assert one[-3:] == ["lab.dist.rank", "--mode", "shard"]
    multi = torchrun_command(LaunchSpec(8, 2, "node0:29400", "job7"), "lab.dist.rank", [])
    assert multi[multi.index("--nnodes") + 1] == "2"
    assert multi[multi.index("--rdzv-endpoint") + 1] == "node0:29400"
    assert multi[multi.index("--rdzv-id") + 1] == "job7"
    with pytest.raises(ConfigError, match="multi-node job needs --rdzv-endpoint"):
        torchrun_command(LaunchSpec(8, 2), "lab.dist.rank", [])
    with pytest.raises(ConfigError, match="must look like HOST:PORT"):
        LaunchSpec(2, 1, "node0").check()


def test_tables_are_placed_evenly_and_batches_split() -> None:
    rows = [100, 90, 50, 40, 30, 5]
    owner = place_tables(rows, 16, 3)
    load = [sum(r for r, o in zip(rows, owner) if o == rank) for rank in range(3)]
    assert sorted(owner) == sorted(set(owner)) or set(owner) == {0, 1, 2}
    assert max(load) - min(load) <= max(rows)
    assert split_evenly(7, 3) == [3, 2, 2] and split_evenly(1, 3) == [1, 0, 0]


def test_mode_for_the_other_model_is_refused_before_launching(encoder_small: ModelHandle) -> None:
    runner = DistRunner(mode="shard", nproc=2)
    with pytest.raises(ConfigError, match="dist mode shard is written for the ranker"):
        runner.load(encoder_small)
    assert runner.process is None


class _AloneComm:
    """Rank 0 of 2 that never hears from rank 1: all_reduce leaves the partial sum."""

    rank, world = 0, 2

    def broadcast(self, tensor: Any, src: int) -> Any:
        return tensor

    def all_reduce(self, tensor: Any) -> Any:
        return tensor


def test_checker_rejects_a_tensor_plan_that_skips_the_all_reduce(
    encoder_small: ModelHandle,
) -> None:
    import torch

    workload = Workload(encoder_small, seed=5)
    samples = workload.samples(8)
    engine = TensorEngine(encoder_small, _AloneComm(), "cpu", 0, None)  # type: ignore[arg-type]
    engine.load()
    batch = workload.collate(samples)
    tensors = [torch.from_numpy(batch[s.name]) for s in encoder_small.inputs]
    with torch.inference_mode():
        embedding, logits = engine.step(8, [t.shape[1:] for t in tensors], tensors)
    actual = {"embedding": embedding.numpy(), "logits": logits.numpy()}
    result = Checker.for_model(encoder_small).check(actual, workload.reference(samples))
    assert not result.passed
    assert "embedding" in " ".join(result.failures)


# ----- real gloo jobs ------------------------------------------------------------------------------
def test_tensor_parallel_encoder_on_3_ranks_passes_the_checker(
    encoder_small: ModelHandle, capfd: pytest.CaptureFixture[str]
) -> None:
    with DistRunner(mode="tensor", nproc=3, timeout_s=60) as runner:
        runner.load(encoder_small)
        assert "torch.distributed.run --nnodes 1 --nproc-per-node 3" in capfd.readouterr().err
        result = verify_runner(encoder_small, runner, batch_sizes=[1, 8], fresh_samples=8)
        assert result.passed, result.summary()
        acc = runner.accounting()
    layers = encoder_small.size_config.layers
    assert acc["world_size"] == 3 and acc["backend"] == "gloo"
    assert acc["bytes_per_query"] > 0 and acc["collective_ms_per_query"] > 0
    # Per batch: the command, two input broadcasts, two all_reduces per layer.
    per_rank = [r["param_bytes"] for r in acc["ranks"]]
    assert len(per_rank) == 3 and all(p > 0 for p in per_rank)
    assert acc["ranks"][0]["collectives"] >= acc["batches"] * (3 + 2 * layers)


def test_sharded_ranker_on_3_ranks_passes_then_a_hung_rank_is_named_within_the_timeout(
    ranker_small: ModelHandle,
) -> None:
    timeout_s = 6.0
    runner = DistRunner(mode="shard", nproc=3, timeout_s=timeout_s)
    try:
        runner.load(ranker_small)
        # Batches of 2 over 3 ranks: one rank has no rows and still joins every all_to_all.
        result = verify_runner(ranker_small, runner, batch_sizes=[2, 64], fresh_samples=32)
        assert result.passed, result.summary()
        acc = runner.accounting()
        tables = sum(ranker_small.size_config.table_rows) * ranker_small.size_config.dim * 4
        held = [r["param_bytes"] for r in acc["ranks"]]
        assert max(held) < tables / 2 < sum(held)  # every rank holds about a third
        hung = runner.ranks[2]["pid"]
        os.kill(hung, signal.SIGSTOP)
        batch = Workload(ranker_small, seed=1).collate(Workload(ranker_small, seed=1).samples(9))
        started = time.monotonic()
        with pytest.raises(WorkerLost, match=rf"rank 2 of 3 \(local rank 2, pid {hung}\) hung"):
            runner.infer(batch)
        assert time.monotonic() - started < timeout_s + MARGIN_S
        assert runner.process is not None and runner.process.poll() is not None
    finally:
        runner.close()


def test_replicas_pass_then_a_killed_rank_fails_the_job_at_once(ranker_small: ModelHandle) -> None:
    timeout_s = 20.0
    runner = DistRunner(mode="replicas", nproc=2, timeout_s=timeout_s)
    try:
        runner.load(ranker_small)
        result = verify_runner(ranker_small, runner, batch_sizes=[64], fresh_samples=16)
        assert result.passed, result.summary()
        workload = Workload(ranker_small, seed=2)
        batch = workload.collate(workload.samples(5))
        runner.infer(batch)
        killed = runner.ranks[1]["pid"]
        os.kill(killed, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(WorkerLost, match=rf"rank 1 of 2 \(local rank 1, pid {killed}\) died"):
            runner.infer(batch)
        assert time.monotonic() - started < timeout_s
        with pytest.raises(WorkerLost, match="rank 1 of 2"):  # and it stays failed
            runner.infer(batch)
    finally:
        runner.close()
    assert runner.process is not None and runner.process.poll() is not None


def _servelab(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "lab", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_replicas_command_merges_per_rank_histograms_exactly(
    ranker_small: ModelHandle, tmp_path: Path
) -> None:
    out, raw = tmp_path / "replicas.json", tmp_path / "latencies.npz"
    done = _servelab(
        "dist", "replicas", "--model", "ranker", "--size", "small", "--nproc", "2",
        "--duration-s", "0.5", "--batch-size", "16", "--output", str(out), "--latencies", str(raw),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "servelab: launching: " in done.stderr and "lab.dist.loadgen" in done.stderr
    assert "scaling efficiency" in done.stdout
    result = json.loads(out.read_text())
    with np.load(raw) as data:
        for name, phase in result["phases"].items():
            everything = np.concatenate([data[f"{name}_{row['rank']}"] for row in phase["ranks"]])
            direct = LatencyHistogram()
            direct.record_many(everything)
            assert LatencyHistogram.from_dict(phase["histogram"]) == direct
            assert direct.count == sum(row["completed"] for row in phase["ranks"])
    assert result["phases"]["one"]["active_ranks"] == 1
    assert result["phases"]["all"]["active_ranks"] == 2
    assert result["scaling_efficiency"] > 0


def test_bench_drives_a_sharded_ranker_over_two_nodes_with_every_audit(
    ranker_small: ModelHandle, tmp_path: Path
) -> None:
    """Two torchrun agents on this host stand for two nodes (c10d rendezvous, one rank each):
    `servelab dist join` is the other node, `servelab bench --dist` the harness's. Whichever
    rank the rendezvous gives the harness's node coordinates."""
    from lab.dist.launch import free_port

    endpoint = f"127.0.0.1:{free_port()}"
    multi = ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint, "--rdzv-id", "t2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    other = subprocess.Popen(
        [sys.executable, "-m", "lab", "dist", "join", "--mode", "shard", "--model", "ranker",
         "--size", "small", *multi],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        done = _servelab(
            "bench", "--model", "ranker", "--size", "small", "--dist", "shard", *multi,
            "--scenario", "offline", "--duration-s", "0.5", "--min-queries", "64",
            "--batch-size", "32", "--audit-count", "32", "--no-replay-check", "--no-roofline",
            "--no-telemetry", "--no-html", "--no-progress", "--output", str(tmp_path),
        )  # fmt: skip
        joined, _ = other.communicate(timeout=120)
    finally:
        other.kill()
    assert "torch.distributed.run --nnodes 2 --nproc-per-node 1" in done.stderr, done.stderr[-3000:]
    assert other.returncode == 0, joined[-3000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["verdict"]["audit_passed"] is True, report["verdict"]
    assert report["config"]["runner"] == "lab.dist.runner:DistRunner"
    assert report["isolation"]["mode"] == "process"
    dist = report["isolation"]["worker"]["dist"]
    assert dist["mode"] == "shard" and dist["world_size"] == 2
    assert dist["bytes_per_query"] > 0 and dist["collective_ms_per_query"] > 0
    held = [r["param_bytes"] for r in dist["ranks"]]
    assert len(held) == 2 and all(0 < h < sum(held) for h in held)  # tables split over nodes


def test_join_prints_the_line_a_node_runs_and_bench_refuses_a_wrong_mode(tmp_path: Path) -> None:
    done = _servelab(
        "dist", "join", "--mode", "shard", "--model", "ranker", "--size", "large",
        "--nproc", "8", "--nnodes", "2", "--rdzv-endpoint", "node0:29400",
        "--rdzv-id", "job1", "--dry-run",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = done.stderr.split("servelab: launching: ", 1)[1]
    assert "--nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0:29400" in line
    assert "--rdzv-id job1" in line and "-m lab.dist.rank --mode shard" in line
    assert "--connect" not in line  # only the harness's node talks to the harness
    single = _servelab("dist", "join", "--mode", "shard", "--model", "ranker", "--dry-run")
    assert single.returncode == 2
    assert single.stderr.strip() == (
        "servelab: error: join is for the other nodes of a multi-node job: give --nnodes >= 2"
    )
    wrong = _servelab(
        "bench", "--model", "ranker", "--dist", "tensor", "--nproc", "2", "--no-progress",
        "--scenario", "single-stream", "--output", str(tmp_path),
    )  # fmt: skip
    assert wrong.returncode == 2
    assert "dist mode tensor is written for the encoder, not ranker" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_dist_serve_runs_the_server_with_the_job_as_its_primary_runner() -> None:
    from lab.cli import build_parser
    from lab.dist.cli import serve_argv

    args = build_parser().parse_args(
        ["dist", "serve", "--mode", "shard", "--model", "ranker", "--size", "large",
         "--nproc", "4", "--nnodes", "2", "--rdzv-endpoint", "pod0:29500", "--rdzv-id", "j",
         "--", "--config", "/etc/servelab/serve.toml"]
    )  # fmt: skip
    argv = serve_argv(args)
    served = build_parser().parse_args(argv)
    assert served.command == "serve" and served.config == "/etc/servelab/serve.toml"
    assert served.runner == "lab.dist.runner:DistRunner"
    assert served.model == ["ranker"] and served.size == "large"
    assert {"mode=shard", "nproc=4", "nnodes=2", "rdzv_endpoint=pod0:29500"} <= set(
        served.runner_option
    )
    runner = DistRunner(**parse_options(served.runner_option))  # the server constructs exactly this
    assert runner.launch == LaunchSpec(4, 2, "pod0:29500", "j")
