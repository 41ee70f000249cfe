"""Flags shared by subcommands: which model, which runner. Every flag has a CPU-safe default."""

from __future__ import annotations

import argparse

from lab.isolation import ISOLATION_MODES, LOAD_TIMEOUT_S, WORKER_TIMEOUT_S, make_runner
from lab.repository import PRECISIONS, ModelHandle, ModelRepository
from lab.runners import parse_options
from lab.runners.base import Runner


def add_model_args(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    parser.add_argument(
        "--model-repository",
        default=None,
        help="model repository folder (default: ./models, or $SERVELAB_MODEL_REPOSITORY)",
    )
    if positional:
        parser.add_argument("model", help="model name, e.g. encoder or ranker")
    else:
        parser.add_argument("--model", default="encoder", help="model name (default: encoder)")
    parser.add_argument(
        "--size", default=None, help="model size (default: the model's default_size)"
    )
    parser.add_argument(
        "--precision", default="fp32", choices=PRECISIONS, help="exported precision"
    )


def add_runner_args(parser: argparse.ArgumentParser, default: str = "onnxruntime") -> None:
    parser.add_argument(
        "--runner",
        default=default,
        help=f"built-in runner (onnxruntime, torch, tensorrt, remote) or path/to/file.py:ClassName (default: {default})",
    )
    parser.add_argument(
        "--runner-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option passed to the runner's constructor, repeatable (e.g. intra_op_threads=2)",
    )


def add_isolation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--isolation",
        default="process",
        choices=ISOLATION_MODES,
        help="process (default): the runner runs in its own worker process, apart from the "
        "clocks, references and checker; none: in this process (debugging only, reports say so)",
    )
    parser.add_argument(
        "--load-timeout-s",
        type=float,
        default=LOAD_TIMEOUT_S,
        help=f"longest the runner's load() may take (default {LOAD_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--worker-timeout-s",
        type=float,
        default=WORKER_TIMEOUT_S,
        help=f"a batch unanswered this long means the worker hung (default {WORKER_TIMEOUT_S:g})",
    )


def model_from_args(args: argparse.Namespace) -> ModelHandle:
    return ModelRepository(args.model_repository).handle(args.model, args.size, args.precision)


def runner_from_args(args: argparse.Namespace) -> Runner:
    return make_runner(
        args.runner,
        parse_options(args.runner_option),
        isolation=getattr(args, "isolation", "process"),
        load_timeout_s=getattr(args, "load_timeout_s", LOAD_TIMEOUT_S),
        infer_timeout_s=getattr(args, "worker_timeout_s", WORKER_TIMEOUT_S),
    )
