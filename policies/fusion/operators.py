"""Mid-fusion operators (fusion-strategies chapter): concat, add, multiply, bilinear."""

from __future__ import annotations

import torch
from torch import nn

from policies.config import register_fusion
from policies.fusion.history import HistoryMeanFusion


@register_fusion("concat")
class ConcatFusion(HistoryMeanFusion):
    """z = ReLU(W [text; vision])."""

    def __init__(self, config, tokens_per_frame: int) -> None:
        super().__init__(config, tokens_per_frame)
        self.proj = nn.Linear(2 * config.projection_dim, config.projection_dim)

    def fuse(self, text, vision):
        return torch.relu(self.proj(torch.cat([text[:, None].expand_as(vision), vision], dim=-1))), {}


@register_fusion("add")
class AddFusion(HistoryMeanFusion):
    """z = text + vision."""

    def fuse(self, text, vision):
        return text[:, None] + vision, {}


@register_fusion("mul")
class MulFusion(HistoryMeanFusion):
    """z = text * vision (element-wise)."""

    def fuse(self, text, vision):
        return text[:, None] * vision, {}


@register_fusion("bilinear")
class BilinearFusion(HistoryMeanFusion):
    """z_k = text^T W_k vision + b_k."""

    def __init__(self, config, tokens_per_frame: int) -> None:
        super().__init__(config, tokens_per_frame)
        dim = config.projection_dim
        self.bilinear = nn.Bilinear(dim, dim, dim)

    def fuse(self, text, vision):
        # One dtype for both inputs: autocast may hand over fp32 text and bf16 frames.
        dtype = self.bilinear.weight.dtype
        left = text[:, None].expand_as(vision).contiguous().to(dtype)
        return self.bilinear(left, vision.to(dtype)), {}
