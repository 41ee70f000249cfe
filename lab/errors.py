"""Errors a user can fix. The CLI prints each as one line and exits non-zero.

    LabError                      exit 2 unless a subclass says otherwise
    ├── ConfigError               bad flag, config file or option value
    │   └── ModelNotFound         no such model / size / exported version
    ├── BackendUnavailable        a library or device is missing (message has the install hint)
    ├── PluginError               a --runner plugin cannot be imported or loaded
    ├── InputError                tensors of the wrong name, shape, dtype or batch size
    ├── RunnerError               a runner failed while loading or running
    │   └── WorkerLost            the isolated runner worker died or hung (the run is INVALID)
    ├── ExportError               export or parity check failed
    ├── CheckFailed               outputs do not match the reference (exit 1)
    └── ServeError                the server or a remote target failed
        └── Overloaded            the queue is full (HTTP 503 / gRPC UNAVAILABLE)

Bugs are not LabErrors: they keep their traceback.
"""

from __future__ import annotations


class LabError(Exception):
    """Base class: something the user can fix. `exit_code` is what the CLI returns."""

    exit_code: int = 2


class ConfigError(LabError):
    pass


class ModelNotFound(ConfigError):
    pass


class BackendUnavailable(LabError):
    pass


class PluginError(LabError):
    pass


class InputError(LabError):
    pass


class RunnerError(LabError):
    pass


class WorkerLost(RunnerError):
    """The runner's worker process died or stopped answering; `reason` says how."""


class ExportError(LabError):
    pass


class CheckFailed(LabError):
    exit_code = 1


class ServeError(LabError):
    pass


class Overloaded(ServeError):
    pass
