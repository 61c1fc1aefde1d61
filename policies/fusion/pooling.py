"""Pooling fusion (seed): average each modality, concatenate, Linear-ReLU-Linear."""

from __future__ import annotations

import torch
from torch import nn

from policies.config import register_fusion
from policies.fusion.history import HistoryMeanFusion


@register_fusion("pooling")
class PoolingFusion(HistoryMeanFusion):
    def __init__(self, config, tokens_per_frame: int) -> None:
        super().__init__(config, tokens_per_frame)
        dim = config.projection_dim
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def fuse(self, text, vision):
        text = text[:, None].expand_as(vision)
        return self.mlp(torch.cat([text, vision], dim=-1)), {}
