"""`servelab serve`: the Open Inference Protocol server (REST, gRPC, Prometheus metrics).

    servelab serve --model encoder --runner onnxruntime --http-port 8000 --grpc-port 8001 \
        --metrics-port 8002
    servelab serve --config serve.toml --http-port 0     # flags override the file

Port 0 picks a free port; the chosen ports are printed on one line at startup:
`serving encoder on http=127.0.0.1:NNNN grpc=127.0.0.1:NNNN metrics=127.0.0.1:NNNN`.
"""

from __future__ import annotations

import argparse
from typing import Any

from lab.repository import PRECISIONS
from lab.runners import parse_options
from lab.serve.config import ServeConfig, build_config, load_file

_D = ServeConfig()


def _flag(parser: argparse.ArgumentParser, name: str, help_text: str, **kwargs: Any) -> None:
    parser.add_argument(name, default=argparse.SUPPRESS, help=help_text, **kwargs)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over KServe v2 REST + gRPC with Triton's extensions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _flag(p, "--config", "TOML file with any of these settings (flags win)", metavar="FILE")
    g = p.add_argument_group("models and runners")
    _flag(g, "--model-repository", "model repository folder (default: ./models)")
    _flag(
        g,
        "--model",
        "model to serve, repeatable (default: encoder)",
        action="append",
        dest="model",
    )
    _flag(g, "--size", "model size (default: each model's default_size)")
    _flag(g, "--precision", f"exported precision (default: {_D.precision})", choices=PRECISIONS)
    _flag(g, "--runner", f"primary runner or path/to/file.py:Class (default: {_D.runner})")
    _flag(
        g,
        "--runner-option",
        "primary runner option, repeatable",
        action="append",
        metavar="KEY=VALUE",
    )
    _flag(
        g,
        "--fallback-runner",
        f"runner used while the primary fails, or 'none' (default: {_D.fallback_runner})",
    )
    _flag(
        g,
        "--fallback-option",
        "fallback runner option, repeatable",
        action="append",
        metavar="KEY=VALUE",
    )
    _flag(
        g,
        "--no-export",
        "do not export missing models at startup",
        action="store_false",
        dest="export",
    )
    g = p.add_argument_group("listeners")
    _flag(g, "--host", f"address to bind (default: {_D.host})")
    _flag(g, "--http-port", f"REST port, 0 = any free (default: {_D.http_port})", type=int)
    _flag(g, "--grpc-port", f"gRPC port, 0 = any free (default: {_D.grpc_port})", type=int)
    _flag(
        g, "--metrics-port", f"Prometheus port, 0 = any free (default: {_D.metrics_port})", type=int
    )
    _flag(
        g,
        "--max-body-bytes",
        f"largest request body accepted (default: {_D.max_body_bytes})",
        type=int,
    )
    _flag(g, "--auth-token-file", "require 'Authorization: Bearer <token>' (not for health)")
    _flag(g, "--grace-s", f"drain time on SIGTERM (default: {_D.grace_s:g})", type=float)
    g = p.add_argument_group("batching and queueing")
    _flag(g, "--max-batch-size", "largest merged batch (default: the model's)", type=int)
    _flag(
        g, "--max-queue-delay-us", "longest wait to fill a batch (default: the model's)", type=int
    )
    _flag(
        g,
        "--preferred-batch-size",
        "batch size that runs without waiting, repeatable (default: the model's)",
        type=int,
        action="append",
        dest="preferred_batch_sizes",
    )
    _flag(
        g,
        "--batch-policy",
        "adaptive: run at once when no batch is executing; fixed_delay: wait up to the delay "
        f"(default: {_D.batch_policy})",
        choices=("adaptive", "fixed_delay"),
    )
    _flag(
        g,
        "--inline-max-compute-ms",
        "adaptive only: a request alone in the server runs on the event loop, skipping the "
        "batcher's thread hand-offs, when its model's lone compute is under this; 0 = off "
        f"(default: {_D.inline_max_compute_ms:g})",
        type=float,
    )
    _flag(
        g,
        "--max-queue-size",
        f"queued requests before shedding with 503 (default: {_D.max_queue_size})",
        type=int,
    )
    _flag(g, "--batcher-workers", f"batches run at once (default: {_D.batcher_workers})", type=int)
    _flag(
        g,
        "--request-timeout-s",
        "default queue timeout per request, 0 = none (default: 0)",
        type=float,
    )
    g = p.add_argument_group("fallback")
    _flag(
        g,
        "--primary-timeout-s",
        "a primary batch slower than this fails over to the fallback; costs a thread "
        f"hand-off per batch, 0 = off (default: {_D.primary_timeout_s:g})",
        type=float,
    )
    _flag(
        g,
        "--breaker-failures",
        f"consecutive primary failures that open the breaker (default: {_D.breaker_failures})",
        type=int,
    )
    _flag(
        g,
        "--breaker-probe-s",
        f"seconds between probes of a failed primary (default: {_D.breaker_probe_s:g})",
        type=float,
    )
    g = p.add_argument_group("drift monitoring (PSI against the reference workload)")
    _flag(g, "--no-drift", "switch drift monitoring off", action="store_false", dest="drift")
    _flag(
        g,
        "--drift-window-rows",
        f"rows in the sliding window (default: {_D.drift_window_rows})",
        type=int,
    )
    _flag(
        g,
        "--drift-min-rows",
        f"rows the window needs before PSI is reported (default: {_D.drift_min_rows})",
        type=int,
    )
    _flag(g, "--drift-warn-psi", f"warn threshold (default: {_D.drift_warn_psi:g})", type=float)
    _flag(g, "--drift-alert-psi", f"alert threshold (default: {_D.drift_alert_psi:g})", type=float)
    _flag(
        g,
        "--drift-action",
        "alert: gauges only; fallback: also route to the fallback runner while an input is at "
        f"alert, until all are under warn (default: {_D.drift_action})",
        choices=("alert", "fallback"),
    )
    _flag(
        g,
        "--drift-reference-rows",
        f"reference workload rows (default: {_D.drift_reference_rows})",
        type=int,
    )
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config")}
    for key in ("runner_option", "fallback_option"):
        if key in given:
            given[key.replace("option", "options")] = parse_options(given.pop(key))
    for key in ("model", "preferred_batch_sizes"):
        if key in given:
            given[key] = tuple(given[key])
    file_values = load_file(args.config) if getattr(args, "config", None) else {}
    return build_config(file_values, given)


def run(args: argparse.Namespace) -> int:
    from lab.serve.app import run as run_server

    return run_server(config_from_args(args))
