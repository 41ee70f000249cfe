"""Server-side errors, each a LabError so transports can map it to one status code.

ServeError (lab.errors)
├── Overloaded (lab.errors)   queue full                      HTTP 503  gRPC UNAVAILABLE
├── QueueTimeout (batcher)    waited past its timeout          HTTP 504  gRPC DEADLINE_EXCEEDED
├── ShuttingDown              draining after SIGTERM           HTTP 503  gRPC UNAVAILABLE
└── Unauthorized              missing or wrong bearer token    HTTP 401  gRPC UNAUTHENTICATED
InputError (lab.errors)       bad request                      HTTP 400  gRPC INVALID_ARGUMENT
└── PayloadTooLarge           body over --max-body-bytes       HTTP 413  gRPC INVALID_ARGUMENT
ModelNotFound (lab.errors)    unknown model or version         HTTP 404  gRPC NOT_FOUND
RunnerError (lab.errors)      the model failed (not the input) HTTP 500  gRPC INTERNAL
└── BatchFailed               primary and fallback both failed on a merged batch
"""

from __future__ import annotations

from lab.batcher import QueueTimeout
from lab.errors import InputError, LabError, ModelNotFound, Overloaded, RunnerError, ServeError

__all__ = [
    "BatchFailed",
    "PayloadTooLarge",
    "ShuttingDown",
    "Unauthorized",
    "failure_reason",
    "grpc_code_name",
    "http_status",
]


class ShuttingDown(ServeError):
    """The server is draining: it finishes what it holds and takes nothing new."""


class Unauthorized(ServeError):
    """No bearer token, or the wrong one."""


class PayloadTooLarge(InputError):
    """A request body over the configured limit."""


class BatchFailed(RunnerError):
    """Every runner failed on a batch. `rows` says how many rows the batch held, so a
    request that was merged with others can be retried alone to find out whose input it was."""

    def __init__(self, message: str, rows: int) -> None:
        super().__init__(message)
        self.rows = rows


# Most specific first: the first isinstance match wins.
_STATUS: tuple[tuple[type[LabError], int, str], ...] = (
    (PayloadTooLarge, 413, "INVALID_ARGUMENT"),
    (InputError, 400, "INVALID_ARGUMENT"),
    (ModelNotFound, 404, "NOT_FOUND"),
    (Unauthorized, 401, "UNAUTHENTICATED"),
    (Overloaded, 503, "UNAVAILABLE"),
    (ShuttingDown, 503, "UNAVAILABLE"),
    (QueueTimeout, 504, "DEADLINE_EXCEEDED"),
)


def http_status(exc: LabError) -> int:
    for cls, status, _ in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def grpc_code_name(exc: LabError) -> str:
    """The grpc.StatusCode member name for an error (grpc itself is imported by the caller)."""
    for cls, _, code in _STATUS:
        if isinstance(exc, cls):
            return code
    return "INTERNAL"


def failure_reason(exc: BaseException | None) -> str:
    """Triton's `reason` label on nv_inference_request_failure: REJECTED (queue full, queue
    timeout, shutting down), CANCELED (the client went away), BACKEND (the model failed),
    OTHER (bad input and everything else)."""
    import asyncio

    if isinstance(exc, (Overloaded, QueueTimeout, ShuttingDown)):
        return "REJECTED"
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELED"
    if isinstance(exc, RunnerError):
        return "BACKEND"
    return "OTHER"


FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
