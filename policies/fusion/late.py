"""Late fusion: one branch per modality, each feeding the action heads; the per-modality
logits are combined (learned softmax weights, or a plain mean)."""

from __future__ import annotations

import torch
from torch import nn

from policies.config import register_fusion
from policies.fusion.history import HistoryMeanFusion


@register_fusion("late")
class LateFusion(HistoryMeanFusion):
    modalities = 2  # features (B, T, 2, D): [text branch, vision branch]

    def __init__(self, config, tokens_per_frame: int) -> None:
        super().__init__(config, tokens_per_frame)
        dim = config.projection_dim
        self.text_branch = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.vision_branch = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.weighted = config.late_combine == "weighted"
        self.modality_logits = nn.Parameter(torch.zeros(2))

    def weights(self) -> torch.Tensor:
        if self.weighted:
            return self.modality_logits.softmax(0)
        return torch.full_like(self.modality_logits, 0.5)

    def fuse(self, text, vision):
        text_out = self.text_branch(text)[:, None].expand_as(vision)
        features = torch.stack([text_out, self.vision_branch(vision)], dim=2)  # (B, T, 2, D)
        weights = self.weights().expand(*vision.shape[:2], 2)
        return features, {"modality_weights": weights}

    def combine(self, per_modality: torch.Tensor) -> torch.Tensor:
        """(..., 2, K) -> (..., K)."""
        return (per_modality * self.weights()[:, None]).sum(-2)
