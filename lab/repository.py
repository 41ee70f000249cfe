"""The model repository: `models/<name>/` in Triton's layout.

Each model folder holds `model.py` (the PyTorch definition, one readable file),
`config.toml` (inputs, outputs, batching, tolerances, SLO) and generated versions
that git ignores under `models/<name>/1/`: `<size>-<precision>/model.onnx` and
`manifest.json` per variant, plus `<size>-weights.safetensors` and `<size>-reference.npz`
shared by the precisions of a size.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from lab.errors import ConfigError, InputError, ModelNotFound
from lab.limits import ValueLimits, parse_limits, parse_max_dims

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

VERSION = "1"
PRECISIONS = ("fp32", "tf32", "fp16")  # tf32: the fp32 graph, TF32 math on GPUs

# Triton datatype names <-> numpy dtypes (Open Inference Protocol / KServe v2).
TRITON_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
NUMPY_TO_TRITON = {v: k for k, v in TRITON_TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `shape` includes the batch dimension; -1 marks a dynamic axis."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int, ...]
    pad_value: float = 0.0
    same_shape_as: str | None = None  # another input whose shape this one must equal
    max_shape: tuple[int, ...] | None = None  # largest size per axis (-1: none), batch first
    limits: ValueLimits | None = None  # allowed values (config.toml min / below / finite)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Rank, fixed and maximum dimensions (not the batch size) against this spec."""
        if len(shape) != len(self.shape):
            raise InputError(
                f"input {self.name!r} has shape {list(shape)}, expected rank {len(self.shape)} "
                f"matching {list(self.shape)}"
            )
        for got, want in zip(shape[1:], self.shape[1:]):
            if want != -1 and got != want:
                raise InputError(
                    f"input {self.name!r} has shape {list(shape)}, expected {list(self.shape)}"
                )
        if self.max_shape is not None:
            for axis, (got, most) in enumerate(zip(shape, self.max_shape)):
                if axis and most != -1 and got > most:
                    raise InputError(
                        f"input {self.name!r} has shape {list(shape)}: axis {axis} is {got} "
                        f"long, over the model's maximum of {most}"
                    )

    def check_values(self, array: np.ndarray) -> None:
        """The declared value limits (ids within the vocabulary, finite floats...)."""
        if self.limits is not None:
            self.limits.check(self.name, array)

    @property
    def datatype(self) -> str:
        """The Triton / KServe v2 datatype name, e.g. FP32."""
        return NUMPY_TO_TRITON[self.dtype]

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape without the batch dimension (Triton's `dims`)."""
        return self.shape[1:]


@dataclass(frozen=True)
class ModelConfig:
    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    slo_ms: float
    default_size: str
    sizes: tuple[str, ...]
    max_queue_delay_us: int = 1000
    preferred_batch_sizes: tuple[int, ...] = ()
    public_seed: int = 2026
    reference_samples: int = 64
    tolerances: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def tolerance(self, precision: str) -> dict[str, dict[str, float]]:
        """Per-output tolerances declared for a precision ({} when none: the checker then uses
        its own defaults for that precision, never fp32's)."""
        return dict(self.tolerances.get(precision, {}))


@dataclass(frozen=True)
class ModelHandle:
    """What a runner's `load()` receives: everything it may need, nothing it must compute.

    Plain, picklable data (it crosses process boundaries: the runner worker, torch.distributed
    ranks, pods): the model folder, the variant and the resolved config. The model's code
    (`models/<name>/model.py`) is imported lazily by whichever process asks for `module` or
    `size_config`.

    Attributes a plugin can rely on: name, size, precision, config, inputs, outputs,
    onnx_path, weights_path, manifest_path, reference_path, version_dir, directory.
    """

    name: str
    size: str
    precision: str
    config: ModelConfig
    directory: Path

    @property
    def module(self) -> ModuleType:
        """The model's definition (`model.py`), imported on first use in this process."""
        return _load_module(self.name, self.directory / "model.py")

    @property
    def version_dir(self) -> Path:
        return self.directory / VERSION / f"{self.size}-{self.precision}"

    @property
    def onnx_path(self) -> Path:
        return self.version_dir / "model.onnx"

    @property
    def weights_path(self) -> Path:
        # Weights are precision independent: fp32 master weights, shared by every variant.
        return self.directory / VERSION / f"{self.size}-weights.safetensors"

    @property
    def manifest_path(self) -> Path:
        return self.version_dir / "manifest.json"

    @property
    def reference_path(self) -> Path:
        return self.directory / VERSION / f"{self.size}-reference.npz"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.config.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.config.outputs

    @property
    def size_config(self) -> Any:
        """The model's dataclass config for this size (from `model.py`'s SIZES)."""
        return self.module.SIZES[self.size]

    @property
    def is_exported(self) -> bool:
        return self.onnx_path.is_file() and self.manifest_path.is_file()

    def require_exported(self) -> Path:
        if not self.is_exported:
            raise ModelNotFound(
                f"model {self.name} ({self.size}, {self.precision}) is not exported yet: "
                f"run `servelab export {self.name} --size {self.size} --precision {self.precision}`"
            )
        return self.onnx_path


def check_same_shapes(specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]]) -> None:
    """Inputs declared `same_shape_as` another must have exactly its shape."""
    for spec in specs:
        other = spec.same_shape_as
        if other is not None and shapes[spec.name] != shapes[other]:
            raise InputError(
                f"input {spec.name!r} has shape {list(shapes[spec.name])}, "
                f"but it must match {other!r} {list(shapes[other])}"
            )


def default_repository_root() -> Path:
    env = os.environ.get("SERVELAB_MODEL_REPOSITORY")
    if env:
        return Path(env)
    cwd = Path.cwd() / "models"
    if cwd.is_dir():
        return cwd
    return Path(__file__).resolve().parent.parent / "models"


def _load_module(name: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise ModelNotFound(f"missing model definition {path}")
    module_name = f"servelab_models.{name}"
    if module_name in sys.modules:
        cached = sys.modules[module_name]
        if getattr(cached, "__file__", None) == str(path):
            return cached
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import model definition {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _resolve_dim(dim: int | str, size_cfg: Any, where: str) -> int:
    if isinstance(dim, int):
        return dim
    if size_cfg is None:  # a first pass that only needs the model-level keys
        return -1
    if size_cfg is not None and hasattr(size_cfg, dim):
        return int(getattr(size_cfg, dim))
    raise ConfigError(
        f"{where}: dimension {dim!r} is neither an integer nor a field of the size config"
    )


def _parse_specs(
    entries: list[dict[str, Any]], kind: str, size_cfg: Any, path: Path
) -> tuple[TensorSpec, ...]:
    specs = []
    for entry in entries:
        try:
            name = entry["name"]
            datatype = entry["datatype"]
            dims = entry["dims"]
        except KeyError as exc:
            raise ConfigError(f"{path}: every [[{kind}]] needs {exc.args[0]!r}") from None
        if datatype not in TRITON_TO_NUMPY:
            raise ConfigError(f"{path}: {kind} {name!r} has unknown datatype {datatype!r}")
        where = f"{path}: {kind} {name}"
        shape = (-1,) + tuple(_resolve_dim(d, size_cfg, where) for d in dims)
        specs.append(
            TensorSpec(
                name=name,
                dtype=TRITON_TO_NUMPY[datatype],
                shape=shape,
                pad_value=float(entry.get("pad_value", 0)),
                same_shape_as=entry.get("same_shape_as"),
                max_shape=parse_max_dims(entry, shape[1:], size_cfg, where),
                limits=parse_limits(entry, shape, size_cfg, where),
            )
        )
    names = {s.name for s in specs}
    for spec in specs:
        if spec.same_shape_as is not None and spec.same_shape_as not in names:
            raise ConfigError(
                f"{path}: {kind} {spec.name!r} has same_shape_as {spec.same_shape_as!r}, "
                f"which is not one of its {kind}s"
            )
    return tuple(specs)


def parse_config(path: Path, size_cfg: Any = None, sizes: tuple[str, ...] = ()) -> ModelConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ModelNotFound(f"missing model config {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    batching = raw.get("dynamic_batching", {})
    workload = raw.get("workload", {})
    try:
        return ModelConfig(
            name=str(raw["name"]),
            max_batch_size=int(raw["max_batch_size"]),
            inputs=_parse_specs(raw.get("input", []), "input", size_cfg, path),
            outputs=_parse_specs(raw.get("output", []), "output", size_cfg, path),
            slo_ms=float(raw["slo_ms"]),
            default_size=str(raw.get("default_size", sizes[0] if sizes else "small")),
            sizes=sizes,
            max_queue_delay_us=int(batching.get("max_queue_delay_us", 1000)),
            preferred_batch_sizes=tuple(int(b) for b in batching.get("preferred_batch_size", [])),
            public_seed=int(workload.get("public_seed", 2026)),
            reference_samples=int(workload.get("reference_samples", 64)),
            tolerances=raw.get("tolerance", {}),
            raw=raw,
        )
    except KeyError as exc:
        raise ConfigError(f"{path}: missing required key {exc.args[0]!r}") from None


class ModelRepository:
    """A folder of models in Triton's layout."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_repository_root()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            raise ModelNotFound(f"model repository {self.root} does not exist")
        return sorted(
            p.name
            for p in self.root.iterdir()
            if (p / "config.toml").is_file() and (p / "model.py").is_file()
        )

    def module(self, name: str) -> ModuleType:
        directory = self.root / name
        if not (directory / "model.py").is_file():
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"no model {name!r} in {self.root} (known: {known})")
        return _load_module(name, directory / "model.py")

    def handle(self, name: str, size: str | None = None, precision: str = "fp32") -> ModelHandle:
        module = self.module(name)
        sizes = tuple(module.SIZES)
        base = parse_config(self.root / name / "config.toml", None, sizes)
        size = size or base.default_size
        if size not in module.SIZES:
            raise ModelNotFound(f"model {name} has no size {size!r} (sizes: {', '.join(sizes)})")
        if precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})"
            )
        config = parse_config(self.root / name / "config.toml", module.SIZES[size], sizes)
        return ModelHandle(
            name=name, size=size, precision=precision, config=config, directory=self.root / name
        )


def numpy_dtype(spec: TensorSpec) -> np.dtype:
    return np.dtype(spec.dtype)
