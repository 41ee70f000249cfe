"""`servelab` command line. Each area registers its own subcommands.

User errors (LabError) print one line and exit with their code (1 = check/SLO failed,
2 = usage/config); bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import difflib
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
    "lab.grading.cli",  # exercise, grade
    "lab.dist.cli",  # dist serve / replicas / loadgen / join
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"servelab: error: {message}{self._did_you_mean(message)}\n")

    def _did_you_mean(self, message: str) -> str:
        """For an unknown flag, the closest known ones (this parser's and its commands')."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for parser in action.choices.values():
                    known.update(parser._option_string_actions)
        unknown = [a.split("=")[0] for a in message.split(":", 1)[1].split() if a.startswith("--")]
        close = [m for a in unknown for m in difflib.get_close_matches(a, sorted(known), 1)]
        return f" (did you mean {', '.join(close)}?)" if close else ""


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
        if args.command == "compare":  # grade reports get the candidate view
            from lab.grading.candidates import dispatch_compare

            dispatch_compare(args)
        return int(args.func(args) or 0)
    except LabError as exc:
        print(f"servelab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("servelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
