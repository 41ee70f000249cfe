"""Server configuration: defaults, then a TOML file (`--config`), then command-line flags.

Every key of the file is a field of ServeConfig (kebab-case or snake_case), for example

    model = ["encoder", "ranker"]      # or model = "encoder"
    runner = "onnxruntime"
    http-port = 8000
    max-queue-size = 256
    [runner-options]
    intra_op_threads = 2
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.serve.drift import DriftSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib


@dataclass
class ServeConfig:
    model_repository: str | None = None
    model: tuple[str, ...] = ("encoder",)
    size: str | None = None
    precision: str = "fp32"
    runner: str = "onnxruntime"
    runner_options: dict[str, Any] = field(default_factory=dict)
    # "none" serves without a fallback (a failing primary then answers 500).
    fallback_runner: str = "onnxruntime"
    fallback_options: dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    # Batching; None takes the model's config.toml value.
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None
    # "adaptive": a batch leaves at once when no other batch is executing (a lone request
    # never waits); "fixed_delay": Triton's behaviour, wait up to max_queue_delay_us.
    batch_policy: str = "adaptive"
    # Under "adaptive", a request that is alone in the server (one open HTTP connection, no
    # other request in flight, nothing queued or running) runs on the event loop's own thread
    # when its model's lone-request compute has been under this many ms: it skips the two
    # thread hand-offs of the batcher (~0.1 ms each on a small VM). The loop serves nothing
    # else meanwhile, hence the bound. 0 turns the fast path off.
    inline_max_compute_ms: float = 20.0
    max_queue_size: int = 512
    batcher_workers: int = 1
    # A request's default queue timeout (0: none); a request may set its own `timeout` (us).
    request_timeout_s: float = 0.0
    # Circuit breaker: after `breaker_failures` consecutive primary failures requests go to
    # the fallback, and the primary is probed with a live batch every `breaker_probe_s` until
    # it succeeds. `primary_timeout_s` > 0 also counts a primary batch slower than that as a
    # failure (its batch is answered by the fallback); it runs the primary on a thread of its
    # own, which costs one thread hand-off per batch (~0.1 ms on a 2-vCPU VM), so it is off
    # by default: turn it on for primaries that can stall (GPU drivers, remote backends).
    primary_timeout_s: float = 0.0
    breaker_failures: int = 3
    breaker_probe_s: float = 5.0
    max_body_bytes: int = 8 * 1024 * 1024
    auth_token_file: str | None = None
    grace_s: float = 30.0
    # Export models that are missing or stale at startup (needs PyTorch in the server).
    export: bool = True
    # Drift monitoring (lab/serve/drift.py): PSI of inputs and outputs over the last
    # `drift_window_rows` rows against the reference workload; warn / alert thresholds;
    # action "fallback" routes batches to the fallback runner while an input is at alert.
    drift: bool = True
    drift_window_rows: int = DriftSettings.window_rows
    drift_min_rows: int = DriftSettings.min_rows
    drift_warn_psi: float = DriftSettings.warn_psi
    drift_alert_psi: float = DriftSettings.alert_psi
    drift_action: str = DriftSettings.action
    drift_reference_rows: int = DriftSettings.reference_rows

    def drift_settings(self) -> DriftSettings:
        return DriftSettings(
            window_rows=self.drift_window_rows,
            min_rows=self.drift_min_rows,
            warn_psi=self.drift_warn_psi,
            alert_psi=self.drift_alert_psi,
            action=self.drift_action,
            reference_rows=self.drift_reference_rows,
        )

    def validate(self) -> ServeConfig:
        if not self.model:
            raise ConfigError("serve needs at least one --model")
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name.replace('_', '-')} {port} is not a port (0-65535)")
        positive = ("max_queue_size", "batcher_workers", "breaker_failures", "max_body_bytes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
        non_negative = (
            "request_timeout_s",
            "primary_timeout_s",
            "breaker_probe_s",
            "grace_s",
            "inline_max_compute_ms",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0")
        if self.batch_policy not in ("adaptive", "fixed_delay"):
            raise ConfigError(
                f"batch-policy {self.batch_policy!r} is not one of adaptive, fixed_delay"
            )
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ConfigError("max-batch-size must be at least 1")
        if self.max_queue_delay_us is not None and self.max_queue_delay_us < 0:
            raise ConfigError("max-queue-delay-us must be >= 0")
        if self.drift:
            self.drift_settings().validate()
            if self.drift_action == "fallback" and self.fallback_runner == "none":
                raise ConfigError("drift-action fallback needs a fallback runner")
        return self

    def auth_token(self) -> str | None:
        if not self.auth_token_file:
            return None
        path = Path(self.auth_token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read auth token file {path}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"auth token file {path} is empty")
        return token


FIELDS = {f.name: f for f in dataclasses.fields(ServeConfig)}


def _coerce(name: str, value: Any, where: str) -> Any:
    default = FIELDS[name].default
    if name in ("model", "preferred_batch_sizes"):
        items = [value] if isinstance(value, (str, int)) else value
        if not isinstance(items, list):
            raise ConfigError(f"{where}: {name} must be a value or a list")
        return tuple(str(v) if name == "model" else int(v) for v in items)
    if name in ("runner_options", "fallback_options"):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name} must be a table")
        return {str(k).replace("-", "_"): v for k, v in value.items()}
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false")
        return value
    if isinstance(default, int) or name in ("max_batch_size", "max_queue_delay_us"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string, got {value!r}")
    return value


def load_file(path: str | Path) -> dict[str, Any]:
    """A TOML config file -> ServeConfig field values (checked)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"serve config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "models":
            name = "model"
        if name not in FIELDS:
            known = ", ".join(sorted(k.replace("_", "-") for k in FIELDS))
            raise ConfigError(f"{path}: unknown key {key!r} (known: {known})")
        values[name] = _coerce(name, value, str(path))
    return values


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> ServeConfig:
    """Defaults <- file <- flags (flags only hold what the user typed)."""
    merged = {**file_values, **flag_values}
    return ServeConfig(**merged).validate()
