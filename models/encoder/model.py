"""A BERT-style text encoder: token + position embeddings, post-LN transformer layers,
masked mean pooling, an L2-normalised embedding and a small classification head.

Shapes: B = batch, T = sequence length (dynamic), C = hidden, H = heads, D = C // H,
K = number of classes. Padding (attention_mask == 0) never changes the outputs of the
real tokens: padded keys are masked out of attention and padded positions out of pooling.

forward(input_ids, attention_mask) -> (embedding (B, C), logits (B, K))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Token ids 0..3 are special; ordinary words are drawn from ids >= FIRST_WORD_ID.
PAD_ID, CLS_ID, SEP_ID, UNK_ID = 0, 1, 2, 3
FIRST_WORD_ID = 4


@dataclass(frozen=True)
class EncoderConfig:
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_seq_len: int
    num_classes: int = 8
    layer_norm_eps: float = 1e-12
    # Workload shape: sequence lengths are log-normal (median `median_len`, spread `len_sigma`)
    # clipped to [min_len, max_seq_len]; word ids follow a Zipf law with exponent `zipf_s`.
    median_len: int = 50
    len_sigma: float = 0.75
    min_len: int = 4
    zipf_s: float = 1.1


SIZES: dict[str, EncoderConfig] = {
    "small": EncoderConfig(layers=4, hidden=256, heads=4, ffn=1024, vocab=8192, max_seq_len=256),
    "base": EncoderConfig(layers=12, hidden=768, heads=12, ffn=3072, vocab=30522, max_seq_len=512),
}


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        # x: (B, T, C); key_padding: (B, 1, 1, T) bool, True where the key is padding
        b, t, c = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, self.head_dim)  # (B, T, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T)
        scores = scores.masked_fill(key_padding, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)  # padded keys get exactly 0
        context = (weights @ v).transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.out(context)


class FeedForward(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.hidden, cfg.ffn)
        self.down = nn.Linear(cfg.ffn, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))  # (B, T, C) -> (B, T, F) -> (B, T, C)


class Layer(nn.Module):
    """One post-LN transformer layer, as in BERT."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, key_padding))  # (B, T, C)
        return self.ffn_norm(x + self.ffn(x))  # (B, T, C)


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.hidden)
        self.position_embedding = nn.Embedding(cfg.max_seq_len, cfg.hidden)
        self.embedding_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))
        self.classifier = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # input_ids, attention_mask: (B, T) int64; mask is 1 for real tokens, 0 for padding
        t = input_ids.shape[1]
        positions = torch.arange(t, device=input_ids.device)  # (T,)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)  # (B, T, C)
        x = self.embedding_norm(x)
        key_padding = (attention_mask == 0)[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, key_padding)
        mask = attention_mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
        pooled = (x * mask).sum(dim=1) / count  # (B, C) mean over real tokens only
        embedding = F.normalize(pooled, p=2.0, dim=-1)  # (B, C), unit length
        logits = self.classifier(pooled)  # (B, K)
        return embedding, logits


def build(cfg: EncoderConfig) -> Encoder:
    return Encoder(cfg)


def init_weights(
    cfg: EncoderConfig, state: dict[str, torch.Tensor], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """BERT's initialiser (N(0, 0.02), zero biases, unit norm scales), except the classifier,
    which gets N(0, 1/C) so that its classes are well separated (top-1 is then a stable measure).
    Drawn in sorted name order from one PCG64 stream, so every machine gets the same bytes."""
    weights: dict[str, np.ndarray] = {}
    for name in sorted(state):
        shape = tuple(state[name].shape)
        if name.endswith("bias"):
            weights[name] = np.zeros(shape, np.float32)
        elif "norm" in name:
            weights[name] = np.ones(shape, np.float32)
        elif name.startswith("classifier"):
            std = 1.0 / math.sqrt(cfg.hidden)
            weights[name] = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
        else:
            weights[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    return weights


def sample(rng: np.random.Generator, cfg: EncoderConfig) -> dict[str, np.ndarray]:
    """One request: [CLS] words... [SEP], length long-tailed (median ~50, tail to the max).

    Returns input_ids and attention_mask of shape (1, T), int64, no padding.
    """
    length = int(round(cfg.median_len * math.exp(cfg.len_sigma * rng.standard_normal())))
    length = min(max(length, cfg.min_len), cfg.max_seq_len)
    words = cfg.vocab - FIRST_WORD_ID
    # Bounded Zipf by inversion: P(rank r) ~ r^-s for r in [1, words].
    u = rng.random(length - 2)
    one_minus_s = 1.0 - cfg.zipf_s
    top = (words + 1.0) ** one_minus_s
    ranks = np.floor((1.0 + u * (top - 1.0)) ** (1.0 / one_minus_s)).astype(np.int64)
    ids = FIRST_WORD_ID + np.clip(ranks, 1, words) - 1
    input_ids = np.concatenate([[CLS_ID], ids, [SEP_ID]]).astype(np.int64)[None, :]  # (1, T)
    return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
