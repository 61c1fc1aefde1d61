"""Multi-head attention that returns its weights when asked, and a pre-LN MLP.

Shape legend: B batch, Q queries, S keys, D projection_dim, H heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, return_weights: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q (B, H, Q, d), k/v (B, H, S, d), mask bool (B, Q, S) True = may attend, or float
    (B, H, Q, S) added to the scores (-inf where a query may not attend).

    Without weights: ``scaled_dot_product_attention`` (the fast path). With weights: the same
    maths written out, so nothing is thrown away."""
    boolean = mask.dtype == torch.bool
    if boolean:
        mask = mask[:, None]
    if not return_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    weights = (scores.masked_fill(~mask, float("-inf")) if boolean else scores + mask).softmax(-1)
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, S, D) -> k, v (B, H, S, d)."""
        k, v = rearrange(self.kv(x), "b s (two h d) -> two b h s d", two=2, h=self.heads)
        return k, v

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.q(x), "b q (h d) -> b h q d", h=self.heads)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, return_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (B, Q, D) and weights (B, H, Q, S) or None."""
        out, weights = attend(q, k, v, mask, return_weights)
        return self.out(rearrange(out, "b h q d -> b q (h d)")), weights


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
