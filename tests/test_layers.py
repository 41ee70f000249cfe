"""One-way layering of `lab`: a module imports only from its own layer or a lower one.

    L0  lab (the package itself), lab.errors
    L1  lab.repository, lab.weights, lab.workload, lab.check, lab.batcher, lab.export
    L2  lab.runners, lab.protocol, lab.isolation
    L3  lab.bench, lab.serve, lab.dist, lab.verify
    L4  lab.grading, lab.tracking, lab.cli, lab.cliargs, lab.commands, lab.__main__, and every lab.<pkg>.cli

Within a layer: lab.protocol imports neither lab.runners nor lab.isolation, lab.runners does
not import lab.isolation (the worker hosts runners, not the other way round), and the L3
packages import none of each other. Every import counts: module level, inside functions and
under TYPE_CHECKING, plus registry strings such as "lab.runners.torch:TorchRunner" that name a
module importlib loads later.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: dict[str, int] = {
    "lab": 0,
    "lab.errors": 0,
    "lab.limits": 0,
    "lab.repository": 1,
    "lab.weights": 1,
    "lab.workload": 1,
    "lab.check": 1,
    "lab.batcher": 1,
    "lab.export": 1,
    "lab.runners": 2,
    "lab.protocol": 2,
    "lab.isolation": 2,
    "lab.bench": 3,
    "lab.serve": 3,
    "lab.dist": 3,
    "lab.verify": 3,
    "lab.grading": 4,
    "lab.tracking": 4,
    "lab.cli": 4,
    "lab.cliargs": 4,
    "lab.commands": 4,
    "lab.__main__": 4,
}

_L3 = ("lab.bench", "lab.serve", "lab.dist", "lab.verify")

# Same-layer imports that break the one-way order: (importer, imported) components.
FORBIDDEN: frozenset[tuple[str, str]] = frozenset(
    {
        ("lab.protocol", "lab.runners"),
        ("lab.protocol", "lab.isolation"),
        ("lab.runners", "lab.isolation"),
        *((a, b) for a in _L3 for b in _L3 if a != b),
    }
)

# Deliberate exceptions, "importer module -> imported module": why. None are needed today.
ALLOWED: dict[tuple[str, str], str] = {}

_REGISTRY_STRING = re.compile(r"lab(?:\.\w+)+(?::\w+)?")


def component(module: str) -> tuple[str, int | None]:
    """The unit a layer is assigned to: `lab.<pkg>.cli` alone, else `lab.<name>`."""
    parts = module.split(".")
    if len(parts) == 3 and parts[2] == "cli":
        return module, 4
    name = ".".join(parts[:2])
    return name, LAYERS.get(name)


def violations(edges: Iterable[tuple[str, str]]) -> list[str]:
    """Each import that breaks the layering, as `importer -> imported (why)`."""
    found = []
    for src, dst in sorted(set(edges)):
        (src_unit, src_layer), (dst_unit, dst_layer) = component(src), component(dst)
        if src_unit == dst_unit or (src, dst) in ALLOWED:
            continue
        if src_layer is None or dst_layer is None:
            unit = src_unit if src_layer is None else dst_unit
            found.append(f"{src} -> {dst} ({unit} has no layer: add it to LAYERS)")
        elif dst_layer > src_layer:
            found.append(f"{src} -> {dst} (L{src_layer} imports L{dst_layer})")
        elif (src_unit, dst_unit) in FORBIDDEN:
            found.append(f"{src} -> {dst} ({src_unit} must not import {dst_unit})")
    return found


def _base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str, source: str, known: set[str], is_package: bool = False) -> set[str]:
    """Every `lab` module that `module` imports, wherever in the file the import is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base_of(node, module, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value.partition(":")[0]
            if _REGISTRY_STRING.fullmatch(node.value) and name in known:
                found.add(name)
    return {name for name in found if name == "lab" or name.startswith("lab.")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def lab_edges() -> list[tuple[str, str]]:
    files = sorted((ROOT / "lab").rglob("*.py"))
    known = {_module_name(path) for path in files}
    edges = []
    for path in files:
        module = _module_name(path)
        for imported in imports_of(module, path.read_text(), known, path.name == "__init__.py"):
            edges.append((module, imported))
    return edges


def test_lab_imports_follow_the_layers() -> None:
    edges = lab_edges()
    assert ("lab.runners.remote", "lab.protocol.client") in edges  # the scan sees imports
    found = violations(edges)
    assert not found, "layering violations:\n  " + "\n  ".join(found)


def test_allow_list_entries_are_still_needed() -> None:
    edges = set(lab_edges())
    stale = [f"{src} -> {dst}" for src, dst in ALLOWED if (src, dst) not in edges]
    assert not stale, "ALLOWED entries no import needs any more: " + ", ".join(stale)


def test_checker_rejects_a_runner_importing_the_server() -> None:
    assert violations([("lab.runners.x", "lab.serve.y")]) == [
        "lab.runners.x -> lab.serve.y (L2 imports L3)"
    ]


def test_checker_rejects_same_layer_imports_against_the_order() -> None:
    found = violations(
        [
            ("lab.protocol.codec", "lab.runners.base"),
            ("lab.runners.base", "lab.isolation.worker"),
            ("lab.bench.remote_target", "lab.serve.client"),
            ("lab.serve.core", "lab.verify"),
            ("lab.serve.core", "lab.serve.cli"),
        ]
    )
    assert found == [
        "lab.bench.remote_target -> lab.serve.client (lab.bench must not import lab.serve)",
        "lab.protocol.codec -> lab.runners.base (lab.protocol must not import lab.runners)",
        "lab.runners.base -> lab.isolation.worker (lab.runners must not import lab.isolation)",
        "lab.serve.core -> lab.serve.cli (L3 imports L4)",
        "lab.serve.core -> lab.verify (lab.serve must not import lab.verify)",
    ]


def test_checker_accepts_downward_and_permitted_imports() -> None:
    assert not violations(
        [
            ("lab.runners.remote", "lab.protocol.codec"),
            ("lab.isolation.worker", "lab.runners.base"),
            ("lab.serve.core", "lab.protocol.codec"),
            ("lab.serve.cli", "lab.serve.app"),
            ("lab.cli", "lab.bench.cli"),
            ("lab.export", "lab.workload"),
            ("lab.bench.environment", "lab"),
        ]
    )


def test_checker_names_a_package_without_a_layer() -> None:
    assert violations([("lab.newthing.x", "lab.errors")]) == [
        "lab.newthing.x -> lab.errors (lab.newthing has no layer: add it to LAYERS)"
    ]


def test_scan_counts_imports_in_functions_type_checking_and_registries() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from lab.serve.core import ModelServer\n"
        "def load():\n"
        "    import lab.bench.harness\n"
        "    from . import base\n"
        "    from ..protocol import codec\n"
        'RUNNERS = {"torch": "lab.runners.torch:TorchRunner"}\n'
        'MESSAGE = "see lab.runners.base for the contract"\n'
    )
    known = {"lab.runners.base", "lab.runners.torch", "lab.protocol.codec", "lab.serve.core"}
    assert imports_of("lab.runners.remote", source, known) == {
        "lab.serve.core",
        "lab.bench.harness",
        "lab.runners.base",
        "lab.protocol.codec",
        "lab.runners.torch",
    }
