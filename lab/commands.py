"""`servelab models`, `servelab export` and `servelab verify`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from lab.cliargs import (
    add_isolation_args,
    add_model_args,
    add_runner_args,
    model_from_args,
    runner_from_args,
)
from lab.errors import CheckFailed, ConfigError
from lab.repository import PRECISIONS, ModelRepository


def register(sub: Any) -> None:
    models = sub.add_parser("models", help="list the models in the repository and their exports")
    models.add_argument(
        "--model-repository",
        default=None,
        help="model repository folder (default: ./models, or $SERVELAB_MODEL_REPOSITORY)",
    )
    models.set_defaults(func=cmd_models)

    export = sub.add_parser(
        "export", help="export a model to ONNX with its weights, reference set and manifest"
    )
    add_model_args(export, positional=True)
    export.add_argument(
        "--force", action="store_true", help="rebuild even when everything is up to date"
    )
    export.set_defaults(func=cmd_export)

    verify = sub.add_parser(
        "verify",
        help="run reference samples through a runner and check every output",
        description="Checks the stored reference set at batch 1 and in padded batches of "
        "mixed lengths, then fresh samples drawn from OS randomness with references computed "
        "on the spot. Every check must pass (exit 1 otherwise).",
    )
    add_model_args(verify)
    add_runner_args(verify)
    add_isolation_args(verify)
    verify.add_argument(
        "--batch-size",
        dest="batch_sizes",
        type=int,
        action="append",
        default=None,
        help="check the reference set at this padded batch size, repeatable "
        "(default: 1 and a mixed-length batch of 8)",
    )
    verify.add_argument(
        "--fresh-samples",
        type=int,
        default=16,
        help="fresh samples with references computed here (default 16; 0 skips)",
    )
    verify.set_defaults(func=cmd_verify)


def _shape(spec: Any) -> str:
    return f"{spec.name} {spec.datatype} [{', '.join(str(d) for d in spec.shape)}]"


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows
    )


def cmd_models(args: argparse.Namespace) -> int:
    from lab.export import read_manifest, stale_reasons

    repository = ModelRepository(args.model_repository)
    names = repository.names()
    if not names:
        print(f"no models in {repository.root}")
        return 0
    rows = [("model", "sizes", "max_batch", "slo_ms", "inputs", "outputs")]
    exports: list[tuple[str, ...]] = [("variant", "onnx_sha256", "weights_sha256", "exported_at")]
    for name in names:
        handle = repository.handle(name)
        rows.append(
            (
                name,
                ", ".join(
                    f"{s}*" if s == handle.config.default_size else s for s in handle.config.sizes
                ),
                str(handle.config.max_batch_size),
                f"{handle.config.slo_ms:g}",
                "; ".join(_shape(s) for s in handle.inputs),
                "; ".join(_shape(s) for s in handle.outputs),
            )
        )
        for size in handle.config.sizes:
            for precision in PRECISIONS:
                variant = repository.handle(name, size, precision)
                manifest = read_manifest(variant)
                if not variant.is_exported or not manifest:
                    continue
                state = " (stale)" if stale_reasons(variant) else ""
                exports.append(
                    (
                        f"{name}/{size}-{precision}{state}",
                        str(manifest.get("onnx_sha256", "?"))[:12],
                        str(manifest.get("weights_sha256", "?"))[:12],
                        str(manifest.get("exported_at", "?")),
                    )
                )
    print(f"model repository {repository.root} (* = default size)")
    print(_table(rows))
    print()
    if len(exports) == 1:
        print("nothing exported yet: run `servelab export MODEL`")
    else:
        print(_table(exports))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lab.export import export

    handle = model_from_args(args)
    outcome = export(
        handle, force=args.force, log=lambda message: print(f"  {message}", flush=True)
    )
    manifest = outcome.manifest
    what = f"{handle.name} {handle.size} {handle.precision}"
    if not outcome.built:
        print(f"{what} is up to date: {handle.onnx_path} (--force rebuilds)")
        return 0
    parity = manifest["parity"]
    errors = ", ".join(f"{k} {v:.2e}" for k, v in parity["max_abs_err"].items())
    print(f"exported {what} in {outcome.seconds:.1f} s ({'; '.join(outcome.reasons)})")
    print(f"  onnx      {handle.onnx_path}  sha256 {manifest['onnx_sha256'][:12]}")
    print(f"  weights   {handle.weights_path}  sha256 {manifest['weights_sha256'][:12]}")
    print(f"  reference {handle.reference_path} (public seed {manifest['reference_seed']})")
    print(f"  parity    ONNX Runtime vs PyTorch on {parity['samples']} samples: {errors}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from lab.export import ensure_exported
    from lab.runners import parse_options
    from lab.verify import precision_hint, verify_runner

    handle = model_from_args(args)
    ensure_exported(handle)
    if args.fresh_samples < 0:
        raise ConfigError("--fresh-samples must be >= 0")
    runner = runner_from_args(args)
    runner.load(handle)
    try:
        result = verify_runner(handle, runner, args.batch_sizes, args.fresh_samples)
    finally:
        runner.close()
    print(
        f"verify {handle.name} {handle.size} {handle.precision} with runner {args.runner} "
        f"(isolation: {args.isolation})"
    )
    print(result.summary())
    if not result:
        failed = [c.label for c in result.checks if not c.result.passed]
        hint = precision_hint(parse_options(args.runner_option), handle.precision)
        print(
            f"servelab: verify failed: {'; '.join(failed)}" + (f" ({hint})" if hint else ""),
            file=sys.stderr,
        )
        return CheckFailed.exit_code
    return 0
