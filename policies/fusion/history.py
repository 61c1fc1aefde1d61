"""The base of the vector fusions: each frame becomes one vector, the history one summary.

Shape legend: B batch, T frames, P tokens per frame, D projection_dim, W max_history.

Frame vector u_t = mean of the step's P tokens (FiLM conditions the tokens first). The vision
vector at step t mixes the current frame with the mean over the visible history:
v_t = Linear([u_t ; mean_{j visible from t} u_j]), so a long history does not wash out the
present. Subclasses only say how the instruction and v_t combine (``fuse``).
"""

from __future__ import annotations

import torch
from torch import nn

from policies.config import FusionConfig
from policies.fusion.base import Fusion, FusionOutput, HistoryRing


class HistoryMeanFusion(Fusion):
    cache_reads_text = False  # the cache holds frame vectors (text-free unless frame_vector reads it)

    def __init__(self, config: FusionConfig, tokens_per_frame: int) -> None:
        super().__init__(config, tokens_per_frame)
        dim = config.projection_dim
        self.vision_mix = nn.Linear(2 * dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def frame_vector(self, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """text (B, D), tokens (B, T, P, D) -> (B, T, D)."""
        return tokens.mean(2)

    def fuse(self, text: torch.Tensor, vision: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """text (B, D), vision (B, T, D) -> features (B, T, D) (or (B, T, M, D)), extras."""
        raise NotImplementedError

    def _finish(
        self, text: torch.Tensor, current: torch.Tensor, history: torch.Tensor, return_attention: bool
    ) -> FusionOutput:
        vision = self.vision_mix(torch.cat([current, history], dim=-1))
        features, extras = self.fuse(text, vision)
        return FusionOutput(self.norm_out(features), extras if return_attention else {})

    def forward(self, text, tokens, query_time, times, frame_mask, return_attention=False) -> FusionOutput:
        frames = self.frame_vector(text, tokens)  # (B, T, D)
        weights = self.visibility(times, frame_mask).to(frames.dtype)  # (B, T, T)
        history = (weights @ frames) / weights.sum(-1, keepdim=True)
        output = self._finish(text, frames, history, return_attention)
        if return_attention:
            output.extras["history_weights"] = weights / weights.sum(-1, keepdim=True)
        return output

    def initial_state(self, text: torch.Tensor) -> HistoryRing:
        return self.ring(text.shape[0], 1, text.device)

    def step(self, state, text, tokens, query_time, time, valid, return_attention=False) -> FusionOutput:
        frame = self.frame_vector(text, tokens[:, None])  # (B, 1, D)
        state.append(time, valid, u=frame)
        visible = state.visible(time).to(frame.dtype)  # (B, S)
        history = (visible[:, None, :] @ state.get("u")) / visible.sum(-1)[:, None, None]
        output = self._finish(text, frame, history, return_attention)
        if return_attention:
            output.extras["history_weights"] = (visible / visible.sum(-1, keepdim=True))[:, None]
            output.extras["slot_time"] = state.slot_time[:, : state.filled][:, None]
            output.extras["slot_visible"] = state.visible(time)[:, None]
        return output
