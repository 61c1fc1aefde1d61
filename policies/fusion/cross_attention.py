"""Cross-attention fusion (the core design): the instruction queries the frame history.

Shape legend: B batch, T frames, P tokens per frame, D projection_dim, H heads, S cache slots.

N blocks; the text query is updated block to block; keys/values come from the projected frame
tokens in every block (each block has its own LayerNorm and K/V projections, cached per block
for incremental steps): q += gate * Attn(LN q, LN kv); q += MLP(LN q). With ``gated`` the
residual branches pass through tanh gates initialised at 0 (Flamingo), so a fresh block starts
as the identity.

With ``recency_bias`` each head adds ``-slope * age`` (age: steps between the query and the frame)
to its attention scores, a learned slope per block and head (ALiBi's linear bias, slopes
initialised at 1, 1/2, 1/4, ...): a fresh model reads the present frame most, as a 1-frame
policy does, and learns how far back to look. The age is relative, so cached keys stay valid.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import nn

from policies.config import FusionConfig, register_fusion
from policies.fusion.attention import MLP, MultiHeadAttention
from policies.fusion.base import Fusion, FusionOutput, HistoryRing, gather_steps


class CrossAttentionBlock(nn.Module):
    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        dim = config.projection_dim
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, config.num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, config.mlp_ratio, config.dropout)
        self.gated = config.gated
        if config.gated:
            self.attn_gate = nn.Parameter(torch.zeros(1))
            self.mlp_gate = nn.Parameter(torch.zeros(1))
        if config.recency_bias:
            # log slopes: head h starts at 2^-h per step of age.
            self.log_slope = nn.Parameter(
                -torch.arange(config.num_heads, dtype=torch.float32) * math.log(2.0)
            )

    def bias(self, age: torch.Tensor | None) -> torch.Tensor | None:
        """age (B, Q, S) in steps -> the score bias (B, H, Q, S), or None without recency_bias."""
        if age is None or not hasattr(self, "log_slope"):
            return None
        return -self.log_slope.exp()[None, :, None, None] * age[:, None].to(self.log_slope.dtype)

    def keys_values(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """kv (B, S, D) -> k, v (B, H, S, d)."""
        return self.attn.keys_values(self.norm_kv(kv))

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor,
        return_attention: bool,
        age: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q (B, Q, D); k, v (B, H, S, d); mask bool (B, Q, S); age (B, Q, S) steps, read only
        with recency_bias."""
        bias = self.bias(age)
        if bias is not None:  # a float mask: the bias where the query may attend, -inf elsewhere
            mask = bias.masked_fill(~mask[:, None], float("-inf"))
        out, weights = self.attn.attend(self.attn.query(self.norm_q(q)), k, v, mask, return_attention)
        mlp_in = q + (torch.tanh(self.attn_gate) * out if self.gated else out)
        mlp_out = self.mlp(self.norm_mlp(mlp_in))
        return mlp_in + (torch.tanh(self.mlp_gate) * mlp_out if self.gated else mlp_out), weights


@register_fusion("cross_attention")
class CrossAttentionFusion(Fusion):
    cache_reads_text = False  # the cache holds the frames' keys and values; text is the query

    def __init__(self, config: FusionConfig, tokens_per_frame: int) -> None:
        super().__init__(config, tokens_per_frame)
        self.blocks = nn.ModuleList([CrossAttentionBlock(config) for _ in range(config.num_blocks)])
        self.norm_out = nn.LayerNorm(config.projection_dim)

    def forward(self, text, tokens, query_time, times, frame_mask, return_attention=False) -> FusionOutput:
        per_frame = tokens.shape[2]  # tokens (B, T, P, D)
        q = text[:, None, :] + query_time  # (B, T, D)
        kv = rearrange(tokens, "b t p d -> b (t p) d")
        mask = repeat(self.visibility(times, frame_mask), "b q t -> b q (t p)", p=per_frame)
        age = self._age(times[:, :, None] - times[:, None, :], per_frame)
        weights = []
        for block in self.blocks:
            k, v = block.keys_values(kv)
            q, w = block(q, k, v, mask, return_attention, age)
            weights.append(w)
        extras = {}
        if return_attention:
            # (blocks, B, H, T, T*P) -> (B, T, blocks, H, T, P): per step, over every frame token.
            stacked = torch.stack(weights)
            extras["attention"] = rearrange(stacked, "n b h q (t p) -> b q n h t p", p=per_frame)
        return FusionOutput(self.norm_out(q), extras)

    def forward_queries(self, text, tokens, query_time, times, frame_mask, index) -> FusionOutput:
        """Only the queries at ``index`` (B, Q) go through the blocks; keys and values are every
        frame's, so each output equals ``forward``'s at its step (the PPO update needs the
        rollout steps, not the context frames before them nor the padding)."""
        per_frame = tokens.shape[2]
        q = text[:, None, :] + gather_steps(query_time, index)  # (B, Q, D)
        kv = rearrange(tokens, "b t p d -> b (t p) d")
        visible = gather_steps(self.visibility(times, frame_mask), index)  # (B, Q, T)
        mask = repeat(visible, "b q t -> b q (t p)", p=per_frame)
        age = self._age(gather_steps(times, index)[:, :, None] - times[:, None, :], per_frame)
        for block in self.blocks:
            k, v = block.keys_values(kv)
            q, _ = block(q, k, v, mask, False, age)
        return FusionOutput(self.norm_out(q))

    def _age(self, age: torch.Tensor, per_frame: int) -> torch.Tensor | None:
        """age (B, Q, T) between query and frame steps -> (B, Q, T * P), or None without
        recency_bias (then nothing is computed)."""
        if not self.config.recency_bias:
            return None
        return repeat(age, "b q t -> b q (t p)", p=per_frame)

    def initial_state(self, text: torch.Tensor) -> list[HistoryRing]:
        return [self.ring(text.shape[0], self.tokens_per_frame, text.device) for _ in self.blocks]

    def prefill(self, state, text, tokens, query_time, times, valid) -> None:
        """The cache holds each block's keys and values of the frame tokens, which do not depend
        on the query: one batched pass per block over all K frames, no query path."""
        per_frame = tokens.shape[2]
        flat = rearrange(tokens, "b k p d -> b (k p) d")
        for block, ring in zip(self.blocks, state, strict=True):
            keys, values = block.keys_values(flat)  # (B, H, K * P, d)
            for k in range(tokens.shape[1]):
                span = slice(k * per_frame, (k + 1) * per_frame)
                ring.append(times[:, k], valid[:, k], slot_dim=2, k=keys[:, :, span], v=values[:, :, span])

    def step(self, state, text, tokens, query_time, time, valid, return_attention=False) -> FusionOutput:
        q = (text + query_time)[:, None, :]  # (B, 1, D)
        weights = []
        visible = age = None
        for block, ring in zip(self.blocks, state, strict=True):
            k_new, v_new = block.keys_values(tokens)  # (B, H, P, d)
            ring.append(time, valid, slot_dim=2, k=k_new, v=v_new)
            if visible is None:  # every block's ring holds the same frames: one mask (B, 1, S)
                visible = ring.visible(time)[:, None, :]
                if self.config.recency_bias:
                    age = (time[:, None] - ring.slot_time[:, : ring.filled])[:, None, :]
            q, w = block(q, ring.get("k"), ring.get("v"), visible, return_attention, age)
            weights.append(w)
        extras = {}
        if return_attention:
            # (blocks, B, H, 1, S) -> (B, 1, blocks, H, S) over cache slots; see slot_time.
            extras["attention"] = rearrange(torch.stack(weights), "n b h q s -> b q n h s")
            extras["slot_time"] = state[0].slot_time[:, : state[0].filled][:, None]
            extras["slot_visible"] = visible
        return FusionOutput(self.norm_out(q), extras)
