"""Flags shared by subcommands: which model, which runner. Every flag has a CPU-safe default."""

from __future__ import annotations

import argparse

from lab.repository import PRECISIONS, ModelHandle, ModelRepository
from lab.runners import create_runner, parse_options
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


def model_from_args(args: argparse.Namespace) -> ModelHandle:
    return ModelRepository(args.model_repository).handle(args.model, args.size, args.precision)


def runner_from_args(args: argparse.Namespace) -> Runner:
    return create_runner(args.runner, parse_options(args.runner_option))
