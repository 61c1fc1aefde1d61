"""Self-attention fusion: the instruction token and the frame tokens in one causal sequence.

Shape legend: B batch, T frames, P tokens per frame, D projection_dim, H heads, S cache slots.

Sequence: [text, frame tokens of step 0, step 1, ...] with modality-type embeddings. Block
causal: a step's P tokens see each other, the text token and the visible earlier frames; the
text token sees itself. Pre-LN transformer layers; the output at step t is the mean of step t's
tokens after the last layer, projected.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn

from policies.config import FusionConfig, register_fusion
from policies.fusion.attention import MLP, MultiHeadAttention
from policies.fusion.base import Fusion, FusionOutput


class SelfAttentionLayer(nn.Module):
    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        dim = config.projection_dim
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, config.num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, config.mlp_ratio, config.dropout)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.norm_attn(x)
        k, v = self.attn.keys_values(h)
        return self.attn.query(h), k, v

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = x + attended
        return x + self.mlp(self.norm_mlp(x))


@register_fusion("self_attention")
class SelfAttentionFusion(Fusion):
    def __init__(self, config: FusionConfig, tokens_per_frame: int) -> None:
        super().__init__(config, tokens_per_frame)
        dim = config.projection_dim
        self.type_text = nn.Parameter(torch.zeros(dim))
        self.type_frame = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.type_text, std=0.02)
        nn.init.normal_(self.type_frame, std=0.02)
        self.layers = nn.ModuleList([SelfAttentionLayer(config) for _ in range(config.num_blocks)])
        self.norm_out = nn.LayerNorm(dim)
        self.project_out = nn.Linear(dim, dim)

    def _mask(self, times, frame_mask) -> torch.Tensor:
        """bool (B, 1 + T*P, 1 + T*P)."""
        per_frame = self.tokens_per_frame
        frames = repeat(
            self.visibility(times, frame_mask), "b i j -> b (i p) (j q)", p=per_frame, q=per_frame
        )
        batch, n = frames.shape[0], frames.shape[1]
        mask = torch.zeros(batch, n + 1, n + 1, dtype=torch.bool, device=frames.device)
        mask[:, 0, 0] = True  # the text token sees itself
        mask[:, 1:, 0] = True  # every frame token sees the text token
        mask[:, 1:, 1:] = frames
        return mask

    def forward(self, text, tokens, query_time, times, frame_mask, return_attention=False) -> FusionOutput:
        per_frame = tokens.shape[2]  # tokens (B, T, P, D)
        x = torch.cat(
            [(text + self.type_text)[:, None], rearrange(tokens + self.type_frame, "b t p d -> b (t p) d")],
            dim=1,
        )
        mask = self._mask(times, frame_mask)
        weights = []
        for layer in self.layers:
            q, k, v = layer.project(x)
            attended, w = layer.attn.attend(q, k, v, mask, return_attention)
            x = layer.finish(x, attended)
            weights.append(w)
        per_step = rearrange(x[:, 1:], "b (t p) d -> b t p d", p=per_frame).mean(2)
        extras = {}
        if return_attention:
            # Per step: mean over its P query tokens -> (B, T, layers, H, 1 + T*P) (key 0 = text).
            stacked = torch.stack(weights)[:, :, :, 1:]  # (n, B, H, T*P, 1+T*P)
            stacked = rearrange(stacked, "n b h (t p) s -> b t n h p s", p=per_frame).mean(4)
            extras["text_attention"] = stacked[..., 0]
            extras["attention"] = rearrange(stacked[..., 1:], "b q n h (t p) -> b q n h t p", p=per_frame)
        return FusionOutput(self.project_out(self.norm_out(per_step)), extras)

    def initial_state(self, text: torch.Tensor) -> dict[str, object]:
        x = (text + self.type_text)[:, None]
        text_kv = []
        for layer in self.layers:
            q, k, v = layer.project(x)
            mask = torch.ones(x.shape[0], 1, 1, dtype=torch.bool, device=x.device)
            attended, _ = layer.attn.attend(q, k, v, mask, False)
            x = layer.finish(x, attended)
            text_kv.append((k, v))
        rings = [self.ring(text.shape[0], self.tokens_per_frame, text.device) for _ in self.layers]
        return {"text_kv": text_kv, "rings": rings}

    def step(self, state, text, tokens, query_time, time, valid, return_attention=False) -> FusionOutput:
        x = tokens + self.type_frame  # (B, P, D)
        weights = []
        for layer, ring, (k_text, v_text) in zip(self.layers, state["rings"], state["text_kv"], strict=True):
            q, k_new, v_new = layer.project(x)
            ring.append(time, valid, slot_dim=2, k=k_new, v=v_new)
            k = torch.cat([k_text, ring.get("k")], dim=2)
            v = torch.cat([v_text, ring.get("v")], dim=2)
            visible = torch.cat([torch.ones_like(valid)[:, None], ring.visible(time)], dim=1)  # (B, 1+S)
            attended, w = layer.attn.attend(
                q, k, v, visible[:, None, :].expand(-1, x.shape[1], -1), return_attention
            )
            x = layer.finish(x, attended)
            weights.append(w)
        extras = {}
        if return_attention:
            stacked = torch.stack(weights).mean(3)  # (n, B, H, 1+S): mean over the step's P tokens
            extras["text_attention"] = rearrange(stacked[..., 0], "n b h -> b 1 n h")
            extras["attention"] = rearrange(stacked[..., 1:], "n b h s -> b 1 n h s")
            ring = state["rings"][0]
            extras["slot_time"] = ring.slot_time[:, : ring.filled][:, None]
            extras["slot_visible"] = ring.visible(time)[:, None]
        return FusionOutput(self.project_out(self.norm_out(x.mean(1)))[:, None], extras)

    def reset_rows(self, state, rows, text) -> None:
        state["text_kv"] = self.initial_state(text)["text_kv"]
        for ring in state["rings"]:
            ring.reset(rows)

    @staticmethod
    def state_nbytes(state) -> int:
        return sum(r.nbytes() for r in state["rings"])
