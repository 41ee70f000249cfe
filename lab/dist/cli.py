"""`servelab dist ...` and the `servelab bench --dist MODE` flags (L4: composes lab.dist with
the harness's histograms).

    servelab bench --dist shard --nproc 2 --model ranker ...   the harness drives the job
    servelab dist replicas --nproc 3 --model ranker            replicas measured from inside
    servelab dist loadgen --target http://HOST:8000 --nproc 4  rank-parallel load generation
    servelab dist join --mode shard --model ranker ...         the other nodes of a job

Every command prints the torchrun line it runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lab.cliargs import add_model_args
from lab.dist import MODES
from lab.dist.launch import BACKENDS, DEFAULT_TIMEOUT_S, LaunchSpec, torchrun_command
from lab.errors import ConfigError, RunnerError

DIST_RUNNER_SPEC = "lab.dist.runner:DistRunner"


# ----- shared flags ------------------------------------------------------------------------------
def add_launch_args(p: argparse.ArgumentParser, nproc_flag: str = "--nproc") -> None:
    p.add_argument(
        nproc_flag,
        "--nproc-per-node",
        dest="nproc",
        type=int,
        default=2,
        help="ranks on this node (default 2; one per GPU on a GPU node)",
    )
    p.add_argument("--nnodes", type=int, default=1, help="nodes in the job (default 1)")
    p.add_argument(
        "--rdzv-endpoint",
        default="",
        metavar="HOST:PORT",
        help="c10d rendezvous, the same on every node (default: 127.0.0.1 and a free port)",
    )
    p.add_argument("--rdzv-id", default="", help="job id, the same on every node (multi-node)")
    p.add_argument(
        "--dist-timeout-s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"longest a collective waits for a peer: a dead or hung rank fails the job "
        f"within it (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--dist-backend", default="auto", choices=BACKENDS, help="auto: nccl with CUDA, else gloo"
    )
    p.add_argument(
        "--dist-threads",
        type=int,
        default=0,
        help="torch threads per rank (0: 1 on a CPU, cores / nproc with CUDA)",
    )


def launch_spec(args: argparse.Namespace) -> LaunchSpec:
    spec = LaunchSpec(args.nproc, args.nnodes, args.rdzv_endpoint, args.rdzv_id)
    spec.check()
    return spec


def add_dist_args(p: argparse.ArgumentParser) -> None:
    """The `servelab bench` flags that put a torch.distributed job behind the harness."""
    group = p.add_argument_group("multi-process inference (torch.distributed)")
    group.add_argument(
        "--dist",
        default=None,
        choices=MODES,
        help="run the model as a torchrun job: replicas (data parallel), shard (ranker "
        "tables over ranks), tensor (encoder, Megatron style); replaces --runner",
    )
    add_launch_args(group)  # type: ignore[arg-type]


def dist_settings(args: argparse.Namespace | dict[str, Any]) -> dict[str, Any]:
    """The DistRunner options the launch flags ask for."""
    values = args if isinstance(args, dict) else vars(args)
    return {
        "mode": values["dist"],
        "nproc": values["nproc"],
        "nnodes": values["nnodes"],
        "rdzv_endpoint": values["rdzv_endpoint"],
        "rdzv_id": values["rdzv_id"],
        "timeout_s": values["dist_timeout_s"],
        "backend": values["dist_backend"],
        "threads": values["dist_threads"],
    }


def dist_runner_from_args(args: argparse.Namespace, load_timeout_s: float = 300.0) -> Any:
    """A DistRunner for `servelab bench --dist`, or None without --dist."""
    if not getattr(args, "dist", None):
        return None
    from lab.dist.runner import DistRunner

    return DistRunner(**dist_settings(args), load_timeout_s=load_timeout_s)


# ----- servelab dist ...  ------------------------------------------------------------------------
def register(sub: Any) -> None:
    dist = sub.add_parser(
        "dist",
        help="multi-process inference and load generation with torch.distributed",
        description="torch.distributed jobs launched with torchrun (nccl with CUDA, gloo "
        "otherwise; nccl has run with one rank on one GPU only). To put a job behind the harness use "
        "`servelab bench --dist MODE --nproc N`.",
    )
    commands = dist.add_subparsers(dest="dist_command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="`servelab serve` whose primary runner is a torchrun job (node rank 0); "
        "the other nodes join it",
        description="Node rank 0 runs `servelab serve SERVE_ARGS` with the job as its "
        "primary runner (--runner and --runner-option are set from the flags here); every "
        "other node (--node-rank > 0) joins the job as `servelab dist join` does. Give the "
        "server's own flags after `--`, e.g. -- --config /etc/servelab/serve.toml.",
    )
    serve.add_argument("--mode", required=True, choices=MODES)
    serve.add_argument("--model", required=True, help="the served model")
    serve.add_argument("--size", default=None, help="model size (default: the model's)")
    serve.add_argument("--precision", default="fp32")
    serve.add_argument("--model-repository", default=None)
    add_launch_args(serve)
    serve.add_argument(
        "--node-rank",
        type=int,
        default=0,
        help="0: this node serves (the default); > 0: it only runs ranks",
    )
    serve.add_argument(
        "serve_args", nargs=argparse.REMAINDER, help="after --: flags for servelab serve"
    )
    serve.set_defaults(func=serve_command)

    replicas = commands.add_parser(
        "replicas",
        help="every rank a whole replica: throughput, merged latency, scaling efficiency",
    )
    _add_load_args(replicas)
    replicas.set_defaults(func=load_command, target="local")

    loadgen = commands.add_parser(
        "loadgen", help="rank-parallel Poisson load against a server, histograms merged"
    )
    loadgen.add_argument("--target", required=True, help="http://HOST:PORT or grpc://HOST:PORT")
    _add_load_args(loadgen)
    loadgen.add_argument(
        "--concurrency", type=int, default=8, help="connections per rank (default 8)"
    )
    loadgen.set_defaults(func=load_command)

    join = commands.add_parser(
        "join",
        help="the ranks of another node of a `servelab bench --dist` job (multi-node)",
        description="Run on every node but the harness's, with the same --nnodes, "
        "--rdzv-endpoint and --rdzv-id as the harness's node.",
    )
    add_model_args(join)
    join.add_argument("--mode", required=True, choices=MODES)
    add_launch_args(join)
    join.add_argument("--dry-run", action="store_true", help="print the line, run nothing")
    join.set_defaults(func=join_command)


def _add_load_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_launch_args(p)
    p.add_argument("--duration-s", type=float, default=3.0, help="per phase (default 3)")
    p.add_argument(
        "--rate-qps",
        type=float,
        default=0.0,
        help="total Poisson rate, rate/N per rank (default 0: closed loop, as fast as it goes)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="closed-loop batch (default 1)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument(
        "--no-baseline", action="store_true", help="skip the rank-0-alone phase before all ranks"
    )
    p.add_argument("--output", default=None, metavar="FILE", help="write the result JSON here")
    p.add_argument(
        "--latencies", default=None, metavar="FILE", help="keep the raw per-rank latencies (.npz)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the line, run nothing")


def _run(command: list[str], dry_run: bool) -> int:
    print(f"servelab: launching: {shlex.join(command)}", file=sys.stderr, flush=True)
    if dry_run:
        return 0
    from lab.dist.runner import rank_environment

    return subprocess.call(
        command, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), env=rank_environment()
    )


def serve_argv(args: argparse.Namespace) -> list[str]:
    """The `servelab serve` command line that `servelab dist serve` runs on node rank 0:
    the server's own flags, the model, and the job as its primary runner."""
    rest = list(args.serve_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    model = ["--model", args.model, "--precision", args.precision]
    if args.size:
        model += ["--size", args.size]
    if args.model_repository:
        model += ["--model-repository", args.model_repository]
    options = [f"{k}={v}" for k, v in dist_settings({**vars(args), "dist": args.mode}).items()]
    return [
        "serve", *rest, *model, "--runner", DIST_RUNNER_SPEC,
        *[x for o in options for x in ("--runner-option", o)],
    ]  # fmt: skip


def serve_command(args: argparse.Namespace) -> int:
    if args.node_rank > 0:
        return join_command(args)
    from lab.cli import build_parser

    argv = serve_argv(args)
    print(f"servelab: serving: servelab {shlex.join(argv)}", file=sys.stderr, flush=True)
    served = build_parser().parse_args(argv)
    return int(served.func(served) or 0)


def join_command(args: argparse.Namespace) -> int:
    if args.nnodes < 2:
        raise ConfigError("join is for the other nodes of a multi-node job: give --nnodes >= 2")
    rank_args = [
        "--mode", args.mode,
        "--model", args.model,
        "--precision", args.precision,
        "--timeout-s", f"{args.dist_timeout_s:g}",
        "--backend", args.dist_backend,
        "--threads", str(args.dist_threads),
    ]  # fmt: skip
    if args.size:
        rank_args += ["--size", args.size]
    if args.model_repository:
        rank_args += ["--model-repository", args.model_repository]
    code = _run(torchrun_command(launch_spec(args), "lab.dist.rank", rank_args), args.dry_run)
    if code:
        raise RunnerError(f"the dist job failed on this node (torchrun exit code {code})")
    return 0


def load_command(args: argparse.Namespace) -> int:
    from lab.repository import ModelRepository
    from lab.weights import ensure_weights

    if args.duration_s <= 0 or args.rate_qps < 0 or args.batch_size < 1:
        raise ConfigError("--duration-s must be > 0, --rate-qps >= 0 and --batch-size >= 1")
    handle = ModelRepository(args.model_repository).handle(args.model, args.size, args.precision)
    ensure_weights(handle)
    with tempfile.TemporaryDirectory(prefix="servelab-load-") as tmp:
        out = Path(args.latencies) if args.latencies else Path(tmp) / "latencies.npz"
        rank_args = [
            "--target", args.target,
            "--model", handle.name,
            "--size", handle.size,
            "--precision", handle.precision,
            "--model-repository", str(handle.directory.parent),
            "--rate-qps", f"{args.rate_qps:g}",
            "--duration-s", f"{args.duration_s:g}",
            "--batch-size", str(args.batch_size),
            "--concurrency", str(getattr(args, "concurrency", 8)),
            "--seed", str(args.seed),
            "--baseline", "0" if args.no_baseline else "1",
            "--timeout-s", f"{args.dist_timeout_s:g}",
            "--backend", args.dist_backend,
            "--threads", str(args.dist_threads),
            "--out", str(out),
        ]  # fmt: skip
        command = torchrun_command(launch_spec(args), "lab.dist.loadgen", rank_args)
        code = _run(command, args.dry_run)
        if args.dry_run:
            return 0
        if code or not out.is_file():
            raise RunnerError(f"the load job failed (torchrun exit code {code}; output above)")
        result = summarize(out)
    result["command"] = command
    print(render(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")
    failed = sum(row["failed"] for phase in result["phases"].values() for row in phase["ranks"])
    return 1 if failed else 0


def summarize(path: Path) -> dict[str, Any]:
    """Per-rank histograms from the raw latencies, merged exactly per phase; throughput and
    scaling efficiency (all ranks' throughput over N x rank 0's alone, same job)."""
    from lab.bench.histogram import LatencyHistogram

    with np.load(path) as data:
        summary = json.loads(bytes(data["summary"]).decode())
        raw = {key: data[key] for key in data.files if key != "summary"}
    result: dict[str, Any] = {
        "kind": "servelab-dist-load",
        "schema_version": "1.0",
        "world_size": summary["world_size"],
        "backend": summary["backend"],
        "target": summary["target"],
        "phases": {},
    }
    for name, rows in summary["phases"].items():
        per_rank = []
        merged = LatencyHistogram()
        for row in rows:
            hist = LatencyHistogram()
            hist.record_many(raw[f"{name}_{row['rank']}"])
            merged.merge(hist)
            per_rank.append({**row, "histogram": hist.to_dict()})
        throughput = sum(r["samples"] / r["wall_s"] for r in rows if r["wall_s"] > 0)
        issue = sum(r["issued"] / r.get("issue_s", r["wall_s"]) for r in rows if r["wall_s"] > 0)
        result["phases"][name] = {
            "ranks": per_rank,
            "active_ranks": len(rows),
            "throughput_sps": throughput,
            "issue_rate_qps": issue,
            "issue_lag_p99_ms": max((r.get("issue_lag_p99_ms", 0.0) for r in rows), default=0.0),
            "latency_ms": {f"p{q:g}": merged.percentile_ns(q) / 1e6 for q in (50, 90, 99, 99.9)},
            "histogram": merged.to_dict(),
        }
    phases = result["phases"]
    if "one" in phases and "all" in phases and phases["one"]["throughput_sps"] > 0:
        n = phases["all"]["active_ranks"]
        result["scaling_efficiency"] = phases["all"]["throughput_sps"] / (
            n * phases["one"]["throughput_sps"]
        )
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{'phase':6} {'ranks':>5} {'samples/s':>10} {'issued/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    ]
    for name, phase in result["phases"].items():
        lat = phase["latency_ms"]
        lines.append(
            f"{name:6} {phase['active_ranks']:>5} {phase['throughput_sps']:>10.1f} "
            f"{phase['issue_rate_qps']:>9.1f} {lat['p50']:>8.3f} {lat['p99']:>8.3f}"
        )
    if "scaling_efficiency" in result:
        lines.append(f"scaling efficiency: {result['scaling_efficiency']:.2f}")
    if result.get("backend") == "gloo":
        lines.append("(gloo on CPU: the ranks share this machine's cores; mechanism, not speed)")
    return "\n".join(lines)
