"""A DLRM-style click-through-rate model in Criteo's layout: 13 dense and 26 categorical
features, one embedding table per categorical feature, a bottom MLP over the dense
features, pairwise dot-product interaction, a top MLP and a sigmoid.

Shapes: B = batch, N = 13 dense features, S = 26 categorical features, E = embedding dim,
F = S + 1 interacting vectors, P = F * (F - 1) / 2 pairwise dot products.

forward(dense (B, N) fp32, sparse (B, S) int64) -> (probability (B, 1),)

Dense inputs are raw non-negative counts (0 where missing); the model applies log1p itself,
in fp32 whatever the compute precision.
Lookups are plain `nn.Embedding` calls, which export as one Gather each
(`EmbeddingBag` would export as a slow ONNX loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# Cardinalities of the 26 categorical features of the Criteo Kaggle display-ads data set.
CRITEO_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
# Share of missing values per dense feature, close to Criteo's.
DENSE_MISSING = (
    0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22,
)  # fmt: skip


@dataclass(frozen=True)
class RankerConfig:
    table_rows: tuple[int, ...]  # one table per categorical feature
    dim: int  # E, shared by the tables and the bottom MLP's output
    bottom: tuple[int, ...]  # bottom MLP widths; the last one must equal dim
    top: tuple[int, ...]  # top MLP widths; the last one is 1 (the click logit)
    num_dense: int = 13
    num_sparse: int = 26
    # Workload shape: dense counts log-normal, categorical ids Zipf(zipf_s) per table.
    zipf_s: float = 1.1

    @property
    def total_rows(self) -> int:
        return sum(self.table_rows)


def _capped(limit: int) -> tuple[int, ...]:
    return tuple(min(rows, limit) for rows in CRITEO_ROWS)


SIZES: dict[str, RankerConfig] = {
    # 840,543 rows x 16 (54 MB): CPUs and CI.
    "small": RankerConfig(
        table_rows=_capped(100_000), dim=16, bottom=(128, 64, 16), top=(256, 64, 1)
    ),
    # 22,771,904 rows x 128 (11.7 GB fp32): GPUs only, generated lazily, exported with
    # ONNX external data (past protobuf's 2 GB limit).
    "large": RankerConfig(
        table_rows=_capped(5_000_000),
        dim=128,
        bottom=(512, 256, 128),
        top=(1024, 1024, 512, 256, 1),
    ),
}


def _mlp(widths: tuple[int, ...], in_features: int, final_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers.append(nn.Linear(in_features, width))
        if final_relu or i < len(widths) - 1:
            layers.append(nn.ReLU())
        in_features = width
    return nn.Sequential(*layers)


class Ranker(nn.Module):
    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        if cfg.bottom[-1] != cfg.dim or cfg.top[-1] != 1 or len(cfg.table_rows) != cfg.num_sparse:
            raise ValueError("ranker config: bottom must end at dim, top at 1, one table each")
        self.cfg = cfg
        self.bottom = _mlp(cfg.bottom, cfg.num_dense, final_relu=True)
        # Tables are allocated uninitialised: their values always come from init_weights
        # (lab/weights.py), and skipping torch's init keeps the large size's build cheap.
        self.tables = nn.ModuleList(
            nn.utils.skip_init(nn.Embedding, rows, cfg.dim) for rows in cfg.table_rows
        )
        features = cfg.num_sparse + 1
        rows, cols = torch.tril_indices(features, features, offset=-1)
        # Flat indices of the strictly lower triangle of the (F, F) interaction matrix.
        self.register_buffer("pairs", rows * features + cols, persistent=False)
        self.top = _mlp(cfg.top, cfg.dim + features * (features - 1) // 2, final_relu=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor]:
        # dense: (B, N) raw counts, sparse: (B, S) int64 row ids. log1p runs in fp32 even
        # when the model computes in fp16: raw counts can exceed fp16's range (65504).
        compute_dtype = self.top[0].weight.dtype
        features = torch.log1p(dense.float().clamp(min=0)).to(compute_dtype)  # (B, N)
        x = self.bottom(features)  # (B, E)
        looked_up = [table(sparse[:, i]) for i, table in enumerate(self.tables)]  # S x (B, E)
        vectors = torch.stack([x, *looked_up], dim=1)  # (B, F, E)
        dots = vectors @ vectors.transpose(1, 2)  # (B, F, F)
        pairs = dots.flatten(1).index_select(1, self.pairs)  # (B, P)
        logit = self.top(torch.cat([x, pairs], dim=1))  # (B, 1)
        return (torch.sigmoid(logit),)


def build(cfg: RankerConfig) -> Ranker:
    return Ranker(cfg)


def init_weights(
    cfg: RankerConfig, state: dict[str, torch.Tensor], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Embeddings N(0, E^-1/4) so a dot product of two rows has a spread near 1, MLPs
    He-normal, the last layer Xavier-normal with bias -1 (click rates around 0.27).
    Drawn in sorted name order from one PCG64 stream, so every machine gets the same bytes."""
    last = f"top.{2 * (len(cfg.top) - 1)}."
    weights: dict[str, np.ndarray] = {}
    for name in sorted(state):
        shape = tuple(state[name].shape)
        if name.startswith("tables."):
            std = cfg.dim**-0.25  # so that <u, v> over E dims has a spread near 1
        elif name.endswith("bias"):
            value = -1.0 if name.startswith(last) else 0.0
            weights[name] = np.full(shape, value, np.float32)
            continue
        elif name.startswith(last):
            std = math.sqrt(1.0 / shape[1])
        else:
            std = math.sqrt(2.0 / shape[1])
        weights[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    return weights


def sample(rng: np.random.Generator, cfg: RankerConfig) -> dict[str, np.ndarray]:
    """One request: dense (1, N) float32 log-normal counts with Criteo-like missing values
    (0 where missing), sparse (1, S) int64 ids, Zipf-distributed within each table."""
    n = cfg.num_dense
    mu = np.linspace(0.5, 4.0, n)  # per-feature log-scale location
    sigma = np.linspace(2.0, 1.0, n)  # per-feature log-scale spread
    counts = np.floor(np.exp(mu + sigma * rng.standard_normal(n)))
    missing = rng.random(n) < np.asarray(DENSE_MISSING[:n])
    dense = np.where(missing, 0.0, counts).astype(np.float32)[None, :]  # (1, N)

    rows = np.asarray(cfg.table_rows, dtype=np.float64)
    u = rng.random(cfg.num_sparse)
    one_minus_s = 1.0 - cfg.zipf_s
    top = (rows + 1.0) ** one_minus_s
    ranks = np.floor((1.0 + u * (top - 1.0)) ** (1.0 / one_minus_s)).astype(np.int64)  # 1..rows
    ranks = np.clip(ranks, 1, rows.astype(np.int64)) - 1
    # Scatter hot ranks over the table with a fixed bijection: 1_000_003 is prime and no
    # table size is a multiple of it.
    ids = (ranks * 1_000_003 + 7) % rows.astype(np.int64)
    return {"dense": dense, "sparse": ids[None, :].astype(np.int64)}  # (1, S)
