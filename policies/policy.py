"""The instruction-conditioned policy: text query x frame history -> action logits and value.

Shape legend: B batch, T frames, H, W image, P tokens per frame, C frame-encoder width,
E text-encoder width, D projection_dim, K sum of action sizes.

    instruction --TextEncoder (cached)--> pooled (B, E) --TextProjector--> text (B, D)
    frames (B, T, H, W, 3) --FrameEncoder, each frame once--> (B, T, P, C) --VisionProjector
        + key time embedding--> tokens (B, T, P, D)
    fusion(text, tokens, query time) --> z (B, T, D) --> ActionHeads (B, T, K), ValueHead (B, T)

``forward`` trains on whole chunks in parallel (causal: step t sees frames <= t);
``step`` runs one step with a per-block cache. They agree numerically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from policies.config import ActionSpaceConfig, PolicyConfig
from policies.errors import CheckpointError
from policies.fusion import FUSIONS
from policies.heads import ActionHeads, FactorizedCategorical, ValueHead, guide
from policies.persist import load_policy, save_policy
from policies.text import make_text_encoder
from policies.vision import FrameEncoder


def sinusoid(times: torch.Tensor, dim: int) -> torch.Tensor:
    """times long (...) -> (..., dim) fixed sinusoidal features of the absolute step."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=times.device) / half)
    angles = times.to(torch.float32)[..., None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@dataclass
class PolicyOutput:
    """logits (B, T, K) (or (B, K) from ``step``), value (B, T) (or (B,)), features, extras
    (attention weights and whatever the fusion shows; empty unless asked)."""

    logits: torch.Tensor
    value: torch.Tensor
    features: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class PolicyState:
    """Incremental state: text (B, D), the fusion's cache, time long (B,) = frames seen."""

    text: torch.Tensor
    fusion: Any
    time: torch.Tensor


class InstructionPolicy(nn.Module):
    """``text_encoder``: one already built for ``config.text`` (loading builds a pretrained
    encoder once and reuses it); None builds it."""

    def __init__(self, config: PolicyConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        dim = config.fusion_kwargs.projection_dim
        self.text_encoder = text_encoder if text_encoder is not None else make_text_encoder(config.text)
        self.text_projector = nn.Linear(self.text_encoder.output_dim, dim, bias=False)
        self.null_instruction = nn.Parameter(torch.randn(dim) * 0.02)
        self.frame_encoder = FrameEncoder(config.vision)
        self.vision_projector = nn.Linear(self.frame_encoder.output_dim, dim, bias=False)
        self.key_time = nn.Linear(dim, dim)
        self.query_time = nn.Linear(dim, dim)
        self.fusion = FUSIONS[config.fusion_kwargs.fusion_type](
            config.fusion_kwargs, config.vision.frame_tokens
        )
        self.action_heads = ActionHeads(dim, config.action_space)
        self.value_head = ValueHead(dim)
        if config.vision.position_embedding:
            # Where each token lies in the frame (row-major grid position). Drawn last, so the
            # other modules' initial weights do not depend on this option.
            self.token_position = nn.Parameter(torch.randn(config.vision.frame_tokens, dim) * 0.02)

    @property
    def device(self) -> torch.device:
        return self.null_instruction.device

    # -- encoders -------------------------------------------------------------------------
    def encode_instructions(
        self, instructions: Sequence[str | None], drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """B instructions (None or "" = no instruction) -> (B, D); ``drop`` bool (B,) swaps in
        the null instruction (instruction dropout, the unconditional branch of guidance)."""
        batch = len(instructions)
        null = torch.tensor([not text for text in instructions], dtype=torch.bool, device=self.device)
        if drop is not None:
            null = null | drop.to(self.device)
        text = self.null_instruction.expand(batch, -1)
        keep = [i for i in range(batch) if not null[i]]
        if keep:
            pooled = self.text_encoder([instructions[i] for i in keep])
            projected = self.text_projector(pooled.to(self.null_instruction.dtype))
            text = text.clone()
            text[keep] = projected.to(text.dtype)  # bf16 under autocast
        return text

    def encode_frames(
        self,
        frames: torch.Tensor,
        times: torch.Tensor,
        frame_mask: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        context_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """frames uint8 (B, T, H, W, 3) -> tokens (B, T, P, D); only real frames are encoded.
        Frames where ``context_mask`` (bool (B, T)) is True go through the frame encoder without
        gradient (history that is read but not trained on, as in truncated BPTT);
        ``context_features`` (B, T, P, C), when given, holds their frame-encoder outputs already
        (computed once and reused, e.g. across the epochs of a PPO update)."""
        batch, steps = frames.shape[:2]
        if context_mask is not None and bool((context_mask & frame_mask).any()):
            trained, context = frame_mask & ~context_mask, frame_mask & context_mask
            if context_features is not None:
                encoded_context = context_features[context]
            else:
                with torch.no_grad():
                    encoded_context = self.frame_encoder(frames[context])
            encoded = self.frame_encoder(frames[trained])
            tokens = encoded.new_zeros(batch, steps, *encoded.shape[1:])
            tokens[trained] = encoded
            tokens[context] = encoded_context.to(encoded.dtype)
        elif bool(frame_mask.all()):
            tokens = self.frame_encoder(frames.flatten(0, 1)).unflatten(0, (batch, steps))
        else:
            real = self.frame_encoder(frames[frame_mask])  # (N, P, C)
            tokens = real.new_zeros(batch, steps, *real.shape[1:])
            tokens[frame_mask] = real
        return self._project(tokens, sinusoid(times, self._dim))

    def _project(self, encoded: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        """Frame-encoder outputs (..., P, C) and the sinusoid of their times (..., D) -> tokens
        (..., P, D): projected, plus token positions and the key time embedding."""
        projected = self.vision_projector(encoded)
        if self.config.vision.position_embedding:
            projected = projected + self.token_position.to(projected.dtype)
        return projected + self.key_time(time_features)[..., None, :]

    @property
    def _dim(self) -> int:
        return self.config.fusion_kwargs.projection_dim

    def _heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.action_heads(features)
        value = self.value_head(features)
        if self.fusion.modalities > 1:
            logits = self.fusion.combine(logits)
            value = self.fusion.combine(value[..., None]).squeeze(-1)
        return logits, value

    # -- the two paths --------------------------------------------------------------------
    def forward(
        self,
        frames: torch.Tensor,
        instructions: Sequence[str | None] | None = None,
        *,
        text: torch.Tensor | None = None,
        times: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        drop_instruction: torch.Tensor | None = None,
        return_attention: bool = False,
        context_mask: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        context_features: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
    ) -> PolicyOutput:
        """frames uint8 (B, T, H, W, 3); instructions (B strings) or text (B, D) already encoded;
        times long (B, T) absolute steps (default 0..T-1); frame_mask bool (B, T) True = real;
        context_mask bool (B, T): frames encoded without gradient, or read from
        ``context_features`` (B, T, P, C) when given (see ``encode_frames``);
        segments long (B, T), non-decreasing along T: a row packed with several episodes (of one
        instruction), each step seeing only the earlier frames of its own segment;
        query_mask bool (B, T): the steps whose outputs are read (the rest come back as zeros;
        the fusion may skip them, e.g. the context frames and padding of a PPO minibatch).

        In training mode with ``instruction_dropout`` > 0 and no ``drop_instruction``, each row
        loses its instruction with that probability."""
        if frames.dim() != 5:
            raise ValueError(f"expected frames (B, T, H, W, 3), got {tuple(frames.shape)}")
        batch, steps = frames.shape[:2]
        device = self.device
        frames = frames.to(device)
        if times is None:
            times = torch.arange(steps, device=device).expand(batch, steps)
        if frame_mask is None:
            frame_mask = torch.ones(batch, steps, dtype=torch.bool, device=device)
        times, frame_mask = times.to(device), frame_mask.to(device)
        if text is None:
            if instructions is None or len(instructions) != batch:
                raise ValueError(
                    f"expected {batch} instructions, got {None if instructions is None else len(instructions)}"
                )
            if drop_instruction is None and self.training and self.config.instruction_dropout > 0:
                drop_instruction = torch.rand(batch, device=device) < self.config.instruction_dropout
            text = self.encode_instructions(instructions, drop_instruction)
        tokens = self.encode_frames(
            frames,
            times,
            frame_mask,
            None if context_mask is None else context_mask.to(device),
            None if context_features is None else context_features.to(device),
        )
        query_time = self.query_time(sinusoid(times, self._dim))
        visible_times = times
        if segments is not None:
            # The fusions' visibility rule hides a frame whose time is >= max_history before the
            # query's; spacing segments further apart than any time gap makes the mask block-causal.
            spacing = self.config.fusion_kwargs.max_history + int(times.max()) + 1
            visible_times = times + segments.to(device) * spacing
        if query_mask is not None and not return_attention:
            return self._forward_queries(text, tokens, query_time, visible_times, frame_mask, query_mask)
        fused = self.fusion(text, tokens, query_time, visible_times, frame_mask, return_attention)
        logits, value = self._heads(fused.features)
        return PolicyOutput(logits, value, fused.features, fused.extras)

    def _forward_queries(self, text, tokens, query_time, times, frame_mask, query_mask) -> PolicyOutput:
        """``forward`` at the steps of ``query_mask`` only, scattered back to (B, T, ...)."""
        query_mask = query_mask.to(tokens.device)
        count = max(int(query_mask.sum(1).max()), 1)
        # Each row's query steps first, in order (a stable sort of ~mask): (B, Q) step indices.
        index = torch.sort((~query_mask).to(torch.uint8), dim=1, stable=True).indices[:, :count]
        features = self.fusion.forward_queries(text, tokens, query_time, times, frame_mask, index).features
        logits, value = self._heads(features)

        read = query_mask.gather(1, index)  # False where a short row's index ran past its steps

        def scatter(values: torch.Tensor) -> torch.Tensor:
            shape = (*index.shape, *[1] * (values.dim() - 2))
            values = torch.where(read.reshape(shape), values, torch.zeros_like(values))
            full = values.new_zeros(values.shape[0], query_mask.shape[1], *values.shape[2:])
            return full.scatter(1, index.reshape(shape).expand_as(values), values)

        return PolicyOutput(scatter(logits), scatter(value), scatter(features), {})

    def initial_state(
        self, instructions: Sequence[str | None] | None = None, *, text: torch.Tensor | None = None
    ) -> PolicyState:
        if text is None:
            if instructions is None:
                raise ValueError("pass instructions or text")
            text = self.encode_instructions(instructions)
        batch = text.shape[0]
        return PolicyState(
            text, self.fusion.initial_state(text), torch.zeros(batch, dtype=torch.long, device=self.device)
        )

    def switch_instruction(self, state: PolicyState, instructions: Sequence[str | None]) -> bool:
        """Give every row a new instruction mid-episode, in place, when the fusion's cache holds
        nothing computed from the text (cross-attention caches the frames' keys and values, so
        only the query changes). Returns False, leaving ``state`` as it was, for a fusion whose
        cache read the old text: the caller re-encodes the history under the new one."""
        if self.fusion.cache_reads_text:
            return False
        state.text = self.encode_instructions(instructions)
        return True

    def reset_rows(
        self,
        state: PolicyState,
        rows: torch.Tensor,
        instructions: Sequence[str | None] | None = None,
        *,
        text: torch.Tensor | None = None,
    ) -> None:
        """Start a new episode in the rows where ``rows`` (bool (B,)) is True, in place: those
        rows forget their frames, restart at time 0 and take their new instruction
        (``instructions``: B entries, only the reset rows are read; or ``text`` (B, D)).
        Vectorized rollouts use it when some envs finish an episode and others go on."""
        rows = rows.to(self.device)
        if not bool(rows.any()):
            return
        if text is None:
            if instructions is None or len(instructions) != rows.shape[0]:
                raise ValueError(f"pass {rows.shape[0]} instructions or text")
            picked = [i for i in range(rows.shape[0]) if rows[i]]
            fresh = self.encode_instructions([instructions[i] for i in picked])
            text = state.text.clone()
            text[picked] = fresh
        state.text = torch.where(rows[:, None], text.to(state.text.dtype), state.text)
        state.time = torch.where(rows, torch.zeros_like(state.time), state.time)
        self.fusion.reset_rows(state.fusion, rows, state.text)

    def step(
        self,
        state: PolicyState,
        frame: torch.Tensor,
        valid: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> PolicyOutput:
        """frame uint8 (B, H, W, 3); valid bool (B,) (False: the row skips this step).
        Returns logits (B, K), value (B,); ``state`` advances in place."""
        device = self.device
        frame = frame.to(device)
        time_features = sinusoid(state.time, self._dim)  # (B, D): keys and the query share it
        if valid is None:  # every row steps: encode them all, no masking
            valid = torch.ones(frame.shape[0], dtype=torch.bool, device=device)
            tokens = self._project(self.frame_encoder(frame), time_features)
        else:
            valid = valid.to(device)
            tokens = self.encode_frames(frame[:, None], state.time[:, None], valid[:, None])[:, 0]
        return self._step_tokens(state, tokens, valid, return_attention, time_features)

    def _step_tokens(
        self,
        state: PolicyState,
        tokens: torch.Tensor,
        valid: torch.Tensor,
        return_attention: bool = False,
        time_features: torch.Tensor | None = None,
    ) -> PolicyOutput:
        time = state.time
        if time_features is None:
            time_features = sinusoid(time, self._dim)
        query_time = self.query_time(time_features)
        fused = self.fusion.step(state.fusion, state.text, tokens, query_time, time, valid, return_attention)
        state.time = time + valid.long()
        logits, value = self._heads(fused.features[:, 0])
        extras = {name: value_[:, 0] for name, value_ in fused.extras.items()}
        return PolicyOutput(logits, value, fused.features[:, 0], extras)

    def prefill(
        self, state: PolicyState, frames: torch.Tensor, valid: torch.Tensor, encode_steps: int = 64
    ) -> None:
        """Feed K frames per row into ``state`` as K ``step`` calls would, with the frame encoder
        run over ``encode_steps`` steps of all rows at once and the fusion's own batched
        ``prefill`` (the cross-attention cache takes all K frames' keys in one pass): frames
        uint8 (B, K, H, W, 3), valid bool (B, K) (False: the row skips that step). Rebuilding a
        cache from a history is its use."""
        device = self.device
        valid = valid.to(device)
        # Times each frame will have: the row's clock advances only on its valid steps.
        times = state.time[:, None] + torch.cumsum(valid.long(), 1) - valid.long()
        for start in range(0, frames.shape[1], encode_steps):
            span = slice(start, start + encode_steps)
            tokens = self.encode_frames(frames[:, span].to(device), times[:, span], valid[:, span])
            query_time = self.query_time(sinusoid(times[:, span], self._dim))
            self.fusion.prefill(state.fusion, state.text, tokens, query_time, times[:, span], valid[:, span])
        state.time = state.time + valid.long().sum(1)

    def distribution(self, logits: torch.Tensor) -> FactorizedCategorical:
        return self.action_heads.distribution(logits)

    def guided(self, conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
        """logits = (1 + s) * cond - s * uncond (per action component, on log-probabilities)."""
        return guide(conditional, unconditional, scale, self.action_heads.sizes)

    def cache_nbytes(self, state: PolicyState) -> int:
        return self.fusion.state_nbytes(state.fusion)

    # -- persistence (policies/persist.py) ------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors``; the directory is replaced atomically."""
        return save_policy(self, directory, extra)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
    ) -> InstructionPolicy:
        """Load ``config.json`` + ``model.safetensors``, checked before anything is built, never
        unpickling anything (``policies.persist.load_policy``)."""
        return load_policy(cls, directory, map_location)

    def check_action_space(self, spec: dict[str, Any]) -> None:
        """Raise if the env's action space (JSON spec) is not the one this policy was built for."""
        expected = self.config.action_space
        actual = ActionSpaceConfig.from_spec(spec)
        if actual != expected:
            raise CheckpointError(
                f"the policy was trained for action space {expected.to_spec()} but the env has {actual.to_spec()}: "
                "use a checkpoint trained on this env"
            )
