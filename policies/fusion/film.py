"""FiLM (BabyAI style): the instruction scales and shifts every frame token before pooling,
so the vision stream itself is conditioned; the instruction reaches the heads only that way."""

from __future__ import annotations

import torch
from torch import nn

from policies.config import register_fusion
from policies.fusion.history import HistoryMeanFusion


@register_fusion("film")
class FiLMFusion(HistoryMeanFusion):
    cache_reads_text = True  # every cached frame vector was modulated by the instruction

    def __init__(self, config, tokens_per_frame: int) -> None:
        super().__init__(config, tokens_per_frame)
        dim = config.projection_dim
        self.norm_tokens = nn.LayerNorm(dim)
        self.film = nn.Linear(dim, 2 * dim)
        self.token_mlp = nn.Linear(dim, dim)
        nn.init.zeros_(self.film.weight)  # start as the identity modulation
        nn.init.zeros_(self.film.bias)

    def modulation(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.film(text).chunk(2, dim=-1)  # (B, D) each
        return 1 + scale, shift

    def frame_vector(self, text, tokens):
        scale, shift = self.modulation(text)
        modulated = torch.relu(self.norm_tokens(tokens) * scale[:, None, None] + shift[:, None, None])
        return self.token_mlp(modulated).mean(2)

    def fuse(self, text, vision):
        scale, shift = self.modulation(text)
        steps = vision.shape[1]
        return vision, {
            "film_scale": scale[:, None].expand(-1, steps, -1),
            "film_shift": shift[:, None].expand(-1, steps, -1),
        }
