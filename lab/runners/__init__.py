"""Runner registry and plugin loading.

`resolve_runner("onnxruntime")` returns a built-in class; `resolve_runner("x.py:MyRunner")`
or `resolve_runner("pkg.mod:MyRunner")` imports a user's runner class.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from lab.errors import ConfigError, PluginError
from lab.runners.base import Runner

# name -> "module:Class"; imported lazily so GPU libraries are never needed on the CPU path.
RUNNERS: dict[str, str] = {
    "onnxruntime": "lab.runners.onnxruntime:OnnxRuntimeRunner",
    "torch": "lab.runners.torch:TorchRunner",
    "tensorrt": "lab.runners.tensorrt:TensorRTRunner",
    "remote": "lab.runners.remote:RemoteRunner",
}


# The base class's public API and its checks: a plugin implements the hooks instead.
SEALED = ("load", "infer", "close", "_validate_inputs", "_validate_outputs")
HOOKS = {"load": "load_impl", "infer": "infer_impl", "close": "close_impl"}


def _import_class(module: Any, class_name: str, where: str) -> type[Runner]:
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PluginError(f"runner plugin {where} has no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise PluginError(
            f"runner plugin {where}:{class_name} is not a subclass of lab.runners.base.Runner"
        )
    check_plugin_class(cls, f"{where}:{class_name}")
    return cls


def check_plugin_class(cls: type[Runner], where: str) -> None:
    """A runner may not replace the base class's public methods or its checks."""
    for name in SEALED:
        if getattr(cls, name) is not getattr(Runner, name):
            hook = HOOKS.get(name)
            instead = f"implement {hook}() instead" if hook else "the base class owns validation"
            raise PluginError(f"runner plugin {where} overrides {name}(): {instead}")


def check_constructed(runner: Runner, where: str) -> None:
    """The base class's state exists only if the constructor called super().__init__()."""
    if not getattr(runner, "_base_initialised", False):
        raise PluginError(
            f"runner plugin {where} does not call super().__init__(**options) in its __init__"
        )


def load_plugin(spec: str) -> type[Runner]:
    """Import `path/to/file.py:ClassName` or `package.module:ClassName`."""
    target, sep, class_name = spec.rpartition(":")
    if not sep or not target or not class_name:
        raise PluginError(f"runner plugin {spec!r} must look like path/to/file.py:ClassName")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise PluginError(f"runner plugin file {path} does not exist")
        module_name = f"servelab_plugin_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"cannot import runner plugin {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise PluginError(
                f"runner plugin {path} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        return _import_class(module, class_name, str(path))
    try:
        module = importlib.import_module(target)
    except ImportError as exc:
        raise PluginError(f"cannot import runner plugin module {target!r}: {exc}") from exc
    return _import_class(module, class_name, target)


def resolve_runner(spec: str) -> type[Runner]:
    """A built-in runner name or a plugin spec -> the runner class."""
    if spec in RUNNERS:
        module_name, class_name = RUNNERS[spec].split(":")
        return _import_class(importlib.import_module(module_name), class_name, module_name)
    if ":" in spec:
        return load_plugin(spec)
    if spec.endswith(".py") or "/" in spec or "." in spec:
        raise ConfigError(
            f"runner plugin {spec!r} needs its class: give {spec}:ClassName "
            "(the Runner subclass to load from it)"
        )
    raise ConfigError(
        f"unknown runner {spec!r}: choose from {', '.join(RUNNERS)} or give path/to/file.py:ClassName"
    )


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """`["threads=2", "device=cuda"]` -> {"threads": 2, "device": "cuda"} (ints, floats, bools parsed)."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"runner option {pair!r} must look like key=value")
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return options


def _parse_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def option_names(cls: type[Runner]) -> list[str]:
    """The options a runner's constructor names (its keyword parameters)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind in kinds]


def _valid_options(names: list[str]) -> str:
    return f"valid options: {', '.join(names)}" if names else "it takes no options"


def create_runner(spec: str, options: dict[str, Any] | None = None) -> Runner:
    """Resolve and construct a runner; a plugin constructor that fails is a PluginError.

    A built-in runner accepts only the options its constructor names (one that also takes
    **options would otherwise drop a misspelt one silently)."""
    cls = resolve_runner(spec)
    names = option_names(cls)
    unknown = [key for key in options or {} if key not in names]
    if unknown and spec in RUNNERS:
        raise ConfigError(f"runner {spec!r} has no option {unknown[0]!r}: {_valid_options(names)}")
    try:
        runner = cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(
            f"runner {spec!r} does not accept these options: {exc} ({_valid_options(names)})"
        ) from exc
    check_constructed(runner, spec)
    return runner
