"""The three ways a job splits a model over its ranks.

Every rank runs the same engine; the coordinating rank (the one the harness talks to)
broadcasts a command header per batch, the others follow. Commands travel on their own
group with a long timeout, so an idle harness never trips a rank's timeout; the work of a
batch runs on the default group, whose timeout (`--dist-timeout-s`) bounds every collective.

    replicas  every rank holds the whole model; a batch is cut into one slice per rank
              (sent point to point), each rank runs its slice, the outputs come back
    shard     the ranker, DLRM / TorchRec style: each embedding table lives on one rank
              (tables placed largest first on the least loaded rank); a batch is sliced
              over the ranks as in replicas, ids go to the table owners with all_to_all,
              looked-up vectors come back with all_to_all, the MLPs run data parallel
    tensor    the encoder, Megatron style: QKV and FC1 column parallel (a rank keeps its
              heads' rows and its share of the FFN), the attention output and FC2 row
              parallel, one all_reduce each per layer; every rank reads only its slices of
              the safetensors file; embeddings, norms and the classifier are replicated
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lab.dist.comm import Comm, split_evenly
from lab.errors import ConfigError
from lab.repository import ModelHandle

CMD_STOP, CMD_INFER = 0, 1
HEADER_LEN = 16


class Engine:
    """Shared plumbing: the command header, slicing a batch over ranks and gathering it."""

    mode = "?"

    def __init__(
        self, handle: ModelHandle, comm: Comm, device: str, coordinator: int, command_group: Any
    ) -> None:
        import torch

        self.torch = torch
        self.handle = handle
        self.comm = comm
        self.device = torch.device(device)
        self.coordinator = coordinator
        self.command_group = command_group
        self.rank, self.world = comm.rank, comm.world
        self.in_specs = handle.inputs
        self.out_specs = handle.outputs
        self.in_dtypes = [getattr(torch, np.dtype(s.dtype).name) for s in self.in_specs]
        self.param_bytes = 0

    # ----- to implement --------------------------------------------------------------------
    def load(self) -> None:
        raise NotImplementedError

    def step(self, batch: int, shapes: list[tuple[int, ...]], tensors: list[Any] | None) -> Any:
        """One batch on every rank; returns the output tensors on the coordinator."""
        raise NotImplementedError

    # ----- the coordinator -------------------------------------------------------------------
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        arrays = [np.ascontiguousarray(inputs[s.name]) for s in self.in_specs]
        batch = int(arrays[0].shape[0])
        shapes = [tuple(a.shape[1:]) for a in arrays]
        self.comm.progress("started")
        self._command(CMD_INFER, batch, shapes)
        tensors = [torch.from_numpy(a).to(self.device) for a in arrays]
        with torch.inference_mode():
            outputs = self.step(batch, shapes, tensors)
        self.comm.progress("finished")
        self.comm.progress("batches")
        self.comm.progress("samples", batch)
        return {spec.name: out.float().cpu().numpy() for spec, out in zip(self.out_specs, outputs)}

    def stop(self) -> None:
        self._command(CMD_STOP, 0, [])

    def _command(self, cmd: int, batch: int, shapes: list[tuple[int, ...]]) -> None:
        header = [cmd, batch, *[d for shape in shapes for d in shape]]
        if len(header) > HEADER_LEN:
            raise ConfigError("too many input dimensions for the command header")
        tensor = self.torch.zeros(HEADER_LEN, dtype=self.torch.int64, device=self.device)
        tensor[: len(header)] = self.torch.tensor(header, dtype=self.torch.int64)
        self._broadcast_command(tensor)

    def _broadcast_command(self, tensor: Any) -> None:
        self.comm._count(
            "command broadcast",
            tensor.numel() * 8 * (self.world - 1) if self.rank == self.coordinator else 0,
            0 if self.rank == self.coordinator else tensor.numel() * 8,
            lambda: self.comm.dist.broadcast(tensor, self.coordinator, group=self.command_group),
        )

    # ----- the others ------------------------------------------------------------------------
    def follow(self) -> None:
        """Serve the coordinator's commands until it says stop."""
        torch = self.torch
        ranks = [len(s.shape) - 1 for s in self.in_specs]
        while True:
            header = torch.zeros(HEADER_LEN, dtype=torch.int64, device=self.device)
            self._broadcast_command(header)
            values = [int(v) for v in header.cpu().tolist()]
            if values[0] == CMD_STOP:
                return
            batch, flat, shapes, at = values[1], values[2:], [], 0
            for rank in ranks:
                shapes.append(tuple(flat[at : at + rank]))
                at += rank
            self.comm.progress("started")
            with torch.inference_mode():
                self.step(batch, shapes, None)
            self.comm.progress("finished")

    # ----- data-parallel helpers -----------------------------------------------------------
    def scatter(
        self, sizes: list[int], shapes: list[tuple[int, ...]], tensors: list[Any] | None
    ) -> list[Any]:
        """This rank's slice of every input (the coordinator sends each rank its slice)."""
        torch = self.torch
        if self.rank == self.coordinator:
            assert tensors is not None
            offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
            for r in range(self.world):
                if r != self.rank and sizes[r]:
                    for t in tensors:
                        self.comm.send(t[offsets[r] : offsets[r + 1]].contiguous(), r)
            mine = offsets[self.rank]
            return [t[mine : mine + sizes[self.rank]] for t in tensors]
        local = []
        for shape, dtype in zip(shapes, self.in_dtypes):
            t = torch.empty((sizes[self.rank], *shape), dtype=dtype, device=self.device)
            if sizes[self.rank]:
                self.comm.recv(t, self.coordinator)
            local.append(t)
        return local

    def gather(self, sizes: list[int], local: Sequence[Any]) -> list[Any] | None:
        """Every rank's output slices, in rank order, on the coordinator."""
        torch = self.torch
        if self.rank != self.coordinator:
            if sizes[self.rank]:
                for t in local:
                    self.comm.send(t.contiguous(), self.coordinator)
            return None
        outputs = []
        for i, spec in enumerate(self.out_specs):
            parts = []
            for r in range(self.world):
                if r == self.rank:
                    parts.append(local[i])
                elif sizes[r]:
                    t = torch.empty(
                        (sizes[r], *spec.shape[1:]), dtype=local[i].dtype, device=self.device
                    )
                    parts.append(self.comm.recv(t, r))
            outputs.append(torch.cat(parts))
        return outputs

    def _count_params(self, tensors: Sequence[Any]) -> None:
        self.param_bytes = int(sum(t.numel() * t.element_size() for t in tensors))


class ReplicaEngine(Engine):
    """Data parallel: the whole model on every rank, a slice of each batch per rank."""

    mode = "replicas"

    def load(self) -> None:
        from lab.weights import load_module

        self.module = load_module(self.handle, generate_missing=False).to(self.device)
        self._count_params(list(self.module.state_dict().values()))

    def step(self, batch: int, shapes: list[tuple[int, ...]], tensors: list[Any] | None) -> Any:
        sizes = split_evenly(batch, self.world)
        local = self.scatter(sizes, shapes, tensors)
        if sizes[self.rank]:
            result = self.module(*local)
            outputs = [result] if isinstance(result, self.torch.Tensor) else list(result)
        else:
            outputs = []
        return self.gather(sizes, outputs)


def place_tables(rows: Sequence[int], dim: int, world: int) -> list[int]:
    """Owner rank of each table: largest first onto the rank holding the fewest bytes."""
    load = [0] * world
    owner = [0] * len(rows)
    for table in sorted(range(len(rows)), key=lambda t: (-rows[t], t)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[table] = rank
        load[rank] += rows[table] * dim
    return owner


class ShardEngine(Engine):
    """The ranker with table-wise sharded embeddings and data-parallel MLPs."""

    mode = "shard"

    def load(self) -> None:
        torch = self.torch
        from safetensors import safe_open

        cfg = self.handle.size_config
        if not hasattr(cfg, "table_rows"):
            raise ConfigError(f"mode shard is for the ranker's tables; {self.handle.name} has none")
        self.cfg = cfg
        self.owner = place_tables(cfg.table_rows, cfg.dim, self.world)
        self.owned = [[t for t, o in enumerate(self.owner) if o == r] for r in range(self.world)]
        with torch.device("meta"):
            skeleton = self.handle.module.build(cfg)
        self.bottom = skeleton.bottom.to_empty(device=self.device)
        self.top = skeleton.top.to_empty(device=self.device)
        self.tables: dict[int, Any] = {}
        with safe_open(str(self.handle.weights_path), framework="pt") as f:
            for prefix, part in (("bottom.", self.bottom), ("top.", self.top)):
                part.load_state_dict(
                    {k: f.get_tensor(prefix + k) for k in part.state_dict()}, strict=True
                )
            for t in self.owned[self.rank]:
                self.tables[t] = f.get_tensor(f"tables.{t}.weight").to(self.device)
        features = cfg.num_sparse + 1
        rows, cols = torch.tril_indices(features, features, offset=-1)
        self.pairs = (rows * features + cols).to(self.device)
        held = [*self.bottom.state_dict().values(), *self.top.state_dict().values()]
        self._count_params([*held, *self.tables.values()])

    def step(self, batch: int, shapes: list[tuple[int, ...]], tensors: list[Any] | None) -> Any:
        torch = self.torch
        sizes = split_evenly(batch, self.world)
        dense, sparse = self.scatter(sizes, shapes, tensors)
        b, dim, me = sizes[self.rank], self.cfg.dim, self.rank
        # 1. ids to the owners: to rank o go my samples' ids for o's tables.
        send_ids = torch.cat([sparse[:, self.owned[o]].reshape(-1) for o in range(self.world)])
        in_splits = [b * len(self.owned[o]) for o in range(self.world)]
        out_splits = [sizes[s] * len(self.owned[me]) for s in range(self.world)]
        recv_ids = torch.empty(sum(out_splits), dtype=torch.int64, device=self.device)
        self.comm.all_to_all(recv_ids, send_ids, out_splits, in_splits)
        # 2. look up for every source rank: (b_s, my tables) ids -> (b_s, my tables, E).
        blocks = []
        for s, ids in enumerate(torch.split(recv_ids, out_splits)):
            ids = ids.view(sizes[s], len(self.owned[me]))
            looked = [self.tables[t][ids[:, j]] for j, t in enumerate(self.owned[me])]
            if looked:
                blocks.append(torch.stack(looked, dim=1).reshape(-1))
        send_vecs = torch.cat(blocks) if blocks else torch.empty(0, device=self.device)
        recv_vecs = torch.empty(b * self.cfg.num_sparse * dim, device=self.device)
        self.comm.all_to_all(
            recv_vecs,
            send_vecs.contiguous(),
            [b * len(self.owned[o]) * dim for o in range(self.world)],
            [sizes[s] * len(self.owned[me]) * dim for s in range(self.world)],
        )
        if not b:
            return self.gather(sizes, [])
        # 3. the dense part on my slice, as in models/ranker/model.py.
        looked_up = torch.empty(b, self.cfg.num_sparse, dim, device=self.device)
        splits = [b * len(self.owned[o]) * dim for o in range(self.world)]
        for o, block in enumerate(torch.split(recv_vecs, splits)):
            if self.owned[o]:
                looked_up[:, self.owned[o]] = block.view(b, len(self.owned[o]), dim)
        x = self.bottom(torch.log1p(dense.float().clamp(min=0)))  # (b, E)
        vectors = torch.cat([x[:, None, :], looked_up], dim=1)  # (b, F, E)
        dots = vectors @ vectors.transpose(1, 2)  # (b, F, F)
        pairs = dots.flatten(1).index_select(1, self.pairs)  # (b, P)
        probability = torch.sigmoid(self.top(torch.cat([x, pairs], dim=1)))  # (b, 1)
        return self.gather(sizes, [probability])


class TensorEngine(Engine):
    """The encoder with Megatron-style tensor parallelism."""

    mode = "tensor"

    def load(self) -> None:
        torch = self.torch
        from safetensors import safe_open

        cfg = self.handle.size_config
        if not hasattr(cfg, "heads"):
            raise ConfigError(f"mode tensor is for the encoder; {self.handle.name} has no heads")
        if self.world > cfg.heads:
            raise ConfigError(
                f"mode tensor splits {cfg.heads} attention heads: at most {cfg.heads} ranks, "
                f"got {self.world}"
            )
        self.cfg = cfg
        c, d = cfg.hidden, cfg.hidden // cfg.heads
        heads = split_evenly(cfg.heads, self.world)
        h0 = sum(heads[: self.rank])
        self.local_heads = heads[self.rank]
        a0, a1 = h0 * d, (h0 + self.local_heads) * d  # my columns of the attention
        ffn = split_evenly(cfg.ffn, self.world)
        f0 = sum(ffn[: self.rank])
        f1 = f0 + ffn[self.rank]
        dev = self.device
        with safe_open(str(self.handle.weights_path), framework="pt") as f:

            def full(name: str) -> Any:
                return f.get_tensor(name).to(dev)

            def rows(name: str, lo: int, hi: int) -> Any:
                return f.get_slice(name)[lo:hi].to(dev)

            def cols(name: str, lo: int, hi: int) -> Any:
                return f.get_slice(name)[:, lo:hi].contiguous().to(dev)

            self.token = full("token_embedding.weight")
            self.position = full("position_embedding.weight")
            self.emb_norm = (full("embedding_norm.weight"), full("embedding_norm.bias"))
            self.classifier = (full("classifier.weight"), full("classifier.bias"))
            self.layers: list[dict[str, Any]] = []
            for i in range(cfg.layers):
                p = f"layers.{i}."
                qkv_w = torch.cat(
                    [rows(p + "attn.qkv.weight", k * c + a0, k * c + a1) for k in range(3)]
                )
                qkv_b = torch.cat(
                    [rows(p + "attn.qkv.bias", k * c + a0, k * c + a1) for k in range(3)]
                )
                self.layers.append(
                    {
                        "qkv": (qkv_w, qkv_b),  # column parallel: (3 x my heads x D, C)
                        "out_w": cols(p + "attn.out.weight", a0, a1),  # row parallel: (C, mine)
                        "out_b": full(p + "attn.out.bias"),
                        "attn_norm": (full(p + "attn_norm.weight"), full(p + "attn_norm.bias")),
                        "up": (rows(p + "ffn.up.weight", f0, f1), rows(p + "ffn.up.bias", f0, f1)),
                        "down_w": cols(p + "ffn.down.weight", f0, f1),  # (C, my share of F)
                        "down_b": full(p + "ffn.down.bias"),
                        "ffn_norm": (full(p + "ffn_norm.weight"), full(p + "ffn_norm.bias")),
                    }
                )
        held = [self.token, self.position, *self.emb_norm, *self.classifier]
        for layer in self.layers:
            for value in layer.values():
                held.extend(value if isinstance(value, tuple) else [value])
        self._count_params(held)

    def step(self, batch: int, shapes: list[tuple[int, ...]], tensors: list[Any] | None) -> Any:
        torch = self.torch
        import torch.nn.functional as F

        if tensors is None:
            tensors = [
                torch.empty((batch, *shape), dtype=dtype, device=self.device)
                for shape, dtype in zip(shapes, self.in_dtypes)
            ]
        for t in tensors:  # every rank needs the whole batch
            self.comm.broadcast(t, self.coordinator)
        input_ids, attention_mask = tensors
        cfg, eps = self.cfg, self.cfg.layer_norm_eps
        b, t = input_ids.shape
        c, d, h = cfg.hidden, cfg.hidden // cfg.heads, self.local_heads
        positions = torch.arange(t, device=self.device)
        x = F.embedding(input_ids, self.token) + F.embedding(positions, self.position)
        x = F.layer_norm(x, (c,), *self.emb_norm, eps=eps)  # (B, T, C)
        key_padding = (attention_mask == 0)[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            qkv = F.linear(x, *layer["qkv"]).view(b, t, 3, h, d)  # (B, T, 3, h, D)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, T, D)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (B, h, T, T)
            scores = scores.masked_fill(key_padding, torch.finfo(scores.dtype).min)
            context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, h * d)
            attn = self.comm.all_reduce(F.linear(context, layer["out_w"]))  # (B, T, C)
            x = F.layer_norm(
                x + attn + layer["out_b"], (c,), layer["attn_norm"][0], layer["attn_norm"][1], eps
            )
            hidden = F.gelu(F.linear(x, *layer["up"]))  # (B, T, my share of F)
            ffn = self.comm.all_reduce(F.linear(hidden, layer["down_w"]))  # (B, T, C)
            x = F.layer_norm(
                x + ffn + layer["down_b"], (c,), layer["ffn_norm"][0], layer["ffn_norm"][1], eps
            )
        mask = attention_mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, C)
        embedding = F.normalize(pooled, p=2.0, dim=-1)
        logits = F.linear(pooled, *self.classifier)
        return [embedding, logits]


ENGINES: dict[str, type[Engine]] = {
    "replicas": ReplicaEngine,
    "shard": ShardEngine,
    "tensor": TensorEngine,
}
