"""`servelab` command line. Each area registers its own subcommands.

User errors (LabError) print one line and exit with their code (1 = check/SLO failed,
2 = usage/config); bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lab import __version__
from lab.errors import LabError
from lab.workload import read_secret_seed

# Modules that define `register(subparsers)`; each adds its subcommands with a `func`.
COMMAND_MODULES = (
    "lab.commands",  # models, export, verify
    "lab.bench.cli",  # bench, compare
    "lab.serve.cli",  # serve
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"servelab: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="servelab", description="ServeLab: make model serving fast without breaking it."
    )
    parser.add_argument("--version", action="version", version=f"servelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:  # first of all: read the secret seed and take it out of the environment
        read_secret_seed()
    except LabError as exc:
        print(f"servelab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "argv"):  # commands that record their command line (bench) declare it
        args.argv = ["servelab", *(sys.argv[1:] if argv is None else argv)]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LabError as exc:
        print(f"servelab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("servelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
