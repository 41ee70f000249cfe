"""Collectives with accounting: every byte a rank sends or receives and every nanosecond it
spends inside a collective, so a report can say what a sharding plan costs per query.

Bytes are the payload the algorithm must move, counted per rank, not what a transport adds:

    broadcast        the source sends (world - 1) x size, each other rank receives size
    send / recv      size
    all_reduce       a ring all-reduce sends and receives 2 (world - 1) / world x size
    all_to_all       the splits that go to (come from) other ranks; a rank's own stays put

Time is wall time around the call (after a CUDA synchronise under nccl, so queued kernels
are not counted as communication; unverified without a GPU). A failed or timed-out
collective raises `CollectiveError` naming the operation and this rank.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

# Per-rank progress and accounting slots in a shared-memory array (int64), one row per
# global rank, written by the ranks on the harness's node and read by the harness.
SLOT_FIELDS = (
    "started",  # commands this rank has started
    "finished",  # ... and finished
    "bytes_sent",
    "bytes_received",
    "collective_ns",
    "collectives",
    "batches",  # batches served (the coordinator)
    "samples",
)
MAX_RANKS = 1024
STATS_BYTES = MAX_RANKS * len(SLOT_FIELDS) * 8
FIELD = {name: i for i, name in enumerate(SLOT_FIELDS)}


class CollectiveError(RuntimeError):
    """A collective failed or timed out (a peer died or hung)."""


class Comm:
    """torch.distributed collectives over the default group, counted."""

    def __init__(
        self,
        rank: int,
        world: int,
        device: str,
        slots: np.ndarray | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        self.torch = torch
        self.dist = dist
        self.rank = rank
        self.world = world
        self.cuda = device.startswith("cuda")
        # Point-to-point waits are bounded explicitly: gloo's blocking send/recv may not be.
        self.timeout = timedelta(seconds=timeout_s)
        # This rank's row of the shared slots, or a private one (ranks on other nodes).
        self.slot = (
            slots[rank]
            if slots is not None and rank < MAX_RANKS
            else np.zeros(len(SLOT_FIELDS), np.int64)
        )

    # ----- accounting --------------------------------------------------------------------
    def _count(self, op: str, sent: float, received: float, call: Any) -> Any:
        if self.cuda:
            self.torch.cuda.synchronize()
        start = time.perf_counter_ns()
        try:
            result = call()
            if self.cuda:
                self.torch.cuda.synchronize()
        except Exception as exc:  # gloo/nccl errors, timeouts: name the op and this rank
            waited_s = (time.perf_counter_ns() - start) / 1e9
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CollectiveError(
                f"{op} failed on rank {self.rank} of {self.world} after {waited_s:.1f} s: "
                f"{type(exc).__name__}: {first}"
            ) from exc
        slot = self.slot
        slot[FIELD["collective_ns"]] += time.perf_counter_ns() - start
        slot[FIELD["collectives"]] += 1
        slot[FIELD["bytes_sent"]] += int(sent)
        slot[FIELD["bytes_received"]] += int(received)
        return result

    def progress(self, field: str, by: int = 1) -> None:
        self.slot[FIELD[field]] += by

    def totals(self) -> dict[str, int]:
        return {name: int(self.slot[i]) for i, name in enumerate(SLOT_FIELDS)}

    # ----- collectives -------------------------------------------------------------------
    def broadcast(self, tensor: Any, src: int) -> Any:
        size = tensor.numel() * tensor.element_size()
        sent = size * (self.world - 1) if self.rank == src else 0
        received = 0 if self.rank == src else size
        self._count("broadcast", sent, received, lambda: self.dist.broadcast(tensor, src))
        return tensor

    def send(self, tensor: Any, dst: int) -> None:
        size = tensor.numel() * tensor.element_size()
        self._count(
            f"send to rank {dst}",
            size,
            0,
            lambda: self.dist.isend(tensor, dst).wait(timeout=self.timeout),
        )

    def recv(self, tensor: Any, src: int) -> Any:
        size = tensor.numel() * tensor.element_size()
        self._count(
            f"recv from rank {src}",
            0,
            size,
            lambda: self.dist.irecv(tensor, src).wait(timeout=self.timeout),
        )
        return tensor

    def all_reduce(self, tensor: Any) -> Any:
        size = tensor.numel() * tensor.element_size()
        moved = 2 * (self.world - 1) / self.world * size
        self._count("all_reduce", moved, moved, lambda: self.dist.all_reduce(tensor))
        return tensor

    def all_to_all(
        self, output: Any, input: Any, output_splits: list[int], input_splits: list[int]
    ) -> Any:
        item = input.element_size()
        sent = sum(n for r, n in enumerate(input_splits) if r != self.rank) * item
        received = sum(n for r, n in enumerate(output_splits) if r != self.rank) * item
        self._count(
            "all_to_all",
            sent,
            received,
            lambda: self.dist.all_to_all_single(output, input, output_splits, input_splits),
        )
        return output

    def all_gather_object(self, value: Any) -> list[Any]:
        """Small plain values (load status, memory) from every rank; not counted."""
        gathered: list[Any] = [None] * self.world
        self._count("all_gather_object", 0, 0, lambda: self.dist.all_gather_object(gathered, value))
        return gathered


def split_evenly(n: int, parts: int) -> list[int]:
    """n items over `parts` as evenly as possible, the first ones one larger."""
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
