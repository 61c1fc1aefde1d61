"""Gated multimodal unit (Arevalo et al.): z = g * tanh(W_t text) + (1 - g) * tanh(W_v vision),
g = sigmoid(W_g [h_text; h_vision]). The gate is returned: g -> 1 trusts the instruction."""

from __future__ import annotations

import torch
from torch import nn

from policies.config import register_fusion
from policies.fusion.history import HistoryMeanFusion


@register_fusion("gmu")
class GMUFusion(HistoryMeanFusion):
    def __init__(self, config, tokens_per_frame: int) -> None:
        super().__init__(config, tokens_per_frame)
        dim = config.projection_dim
        self.text_proj = nn.Linear(dim, dim)
        self.vision_proj = nn.Linear(dim, dim)
        self.gate = nn.Linear(2 * dim, dim)

    def fuse(self, text, vision):
        h_text = torch.tanh(self.text_proj(text))[:, None].expand_as(vision)
        h_vision = torch.tanh(self.vision_proj(vision))
        gate = torch.sigmoid(self.gate(torch.cat([h_text, h_vision], dim=-1)))  # (B, T, D)
        return gate * h_text + (1 - gate) * h_vision, {"gate": gate}
