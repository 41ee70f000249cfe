"""Command-line flags derived from a config dataclass's fields, and the settings they gave.

One flag per field (groups are walked one level down), from the field's name, type,
default and `help` metadata (see lab.bench.config.setting):

    duration_s: float = 10.0              --duration-s FLOAT   (default 10)
    audit: bool = True                    --no-audit
    main_job: bool = False                --main-job
    preferred_batch_sizes: list[int]      --preferred-batch-size N, repeatable (singular)
    baseline_options: dict[str, Any]      --baseline-option KEY=VALUE, repeatable

Every flag defaults to "not given" (argparse.SUPPRESS), so that a settings file can fill
what the command line left out; `given_settings` returns only the flags given.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterator
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any

from lab.runners import parse_options


def config_fields(cls: type) -> Iterator[tuple[Field[Any], Any, str | None]]:
    """(field, resolved type, group name or None) for every CLI field of `cls`, groups
    walked one level down."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind = hints[f.name]
        if is_dataclass(kind):
            for inner, inner_kind, _ in config_fields(kind):  # type: ignore[arg-type]
                yield inner, inner_kind, f.name
        elif f.metadata.get("cli", True):
            yield f, kind, None


def _unwrap(kind: Any) -> Any:
    """`int | None` -> int; other types unchanged."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def flag_name(f: Field[Any], kind: Any) -> str:
    """The flag without dashes: repeatable flags are singular (`scenarios` -> `scenario`)."""
    name = f.name
    if typing.get_origin(_unwrap(kind)) in (list, dict) and name.endswith("s"):
        name = name[:-1]
    return name.replace("_", "-")


def _default_text(f: Field[Any]) -> str:
    shown = f.metadata.get("shown")
    if shown is not None:
        return f"default: {shown}"
    if f.default is None or f.default is MISSING:
        return ""
    value = f.default
    if isinstance(value, float):
        return f"default {value:g}"
    return f"default {value}"


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per CLI field of `cls` (see the module docstring); a group's flags are
    listed under its name in --help."""
    hints = typing.get_type_hints(cls)
    sections: dict[str, Any] = {
        f.name: parser.add_argument_group(f.name.replace("_", "-"), hints[f.name].__doc__)
        for f in fields(cls)
        if is_dataclass(hints[f.name])
    }
    for f, kind, group in config_fields(cls):
        add_flag(sections[group] if group else parser, f, kind)


def add_flag(parser: Any, f: Field[Any], kind: Any) -> None:
    """The flag for one field (`parser` is a parser or one of its argument groups)."""
    base = _unwrap(kind)
    origin = typing.get_origin(base)
    help_text = str(f.metadata.get("help", "")).replace("%", "%%")
    default_text = _default_text(f)
    options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
    if f.metadata.get("metavar"):
        options["metavar"] = f.metadata["metavar"]
    if base is bool:
        if f.default is True:
            parser.add_argument(
                f"--no-{flag_name(f, kind)}",
                action="store_false",
                help=f"no {help_text}",
                **options,
            )
        else:
            parser.add_argument(
                f"--{flag_name(f, kind)}", action="store_true", help=help_text, **options
            )
        return
    if origin in (list, dict):
        options["action"] = "append"
        item = typing.get_args(base)[0] if origin is list else str
    else:
        item = base
    if item is not str:
        options["type"] = item
    choices = f.metadata.get("choices")
    if choices is not None:
        options["choices"] = tuple(choices())
    suffix = f" ({default_text})" if default_text else ""
    parser.add_argument(f"--{flag_name(f, kind)}", help=f"{help_text}{suffix}", **options)


def given_settings(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The CLI fields of `cls` that were given on the command line, as flat settings;
    KEY=VALUE lists for dict fields become dicts."""
    given = vars(args)
    settings: dict[str, Any] = {}
    for f, kind, _ in config_fields(cls):
        if f.name not in given:
            continue
        value = given[f.name]
        if typing.get_origin(_unwrap(kind)) is dict and isinstance(value, list):
            value = parse_options(value)
        settings[f.name] = value
    return settings
