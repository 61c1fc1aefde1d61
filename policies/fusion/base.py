"""What every fusion shares: the visibility rule over a frame history, the ring buffer that
holds the history for incremental steps, and the module interface.

Shape legend: B batch, T frames (steps), P tokens per frame, D projection_dim, H heads,
W max_history (frames), S cache slots (= W * P).

Visibility: the output at step i sees frame j iff frame j is real, j <= i,
times[i] - times[j] < W, and times[i] - times[j] is a multiple of the history stride (1 by
default: every frame; 8: the frames 8, 16, ... steps back, a W-step memory read from W / 8
frames). Cached keys carry their absolute time, so they never change as the
history grows; the parallel and incremental paths apply the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from policies.config import FusionConfig


def visibility(times: torch.Tensor, frame_mask: torch.Tensor, window: int, stride: int = 1) -> torch.Tensor:
    """times long (B, T), frame_mask bool (B, T) True = real frame -> bool (B, T_query, T_key).

    A padded query row that would see nothing sees its own frame (its output is ignored), so
    softmax never meets an all-masked row.
    """
    steps = times.shape[1]
    causal = torch.ones(steps, steps, dtype=torch.bool, device=times.device).tril()
    age = times[:, :, None] - times[:, None, :]
    recent = age < window
    if stride > 1:
        recent = recent & (age % stride == 0)
    allowed = causal & recent & frame_mask[:, None, :]
    empty = ~allowed.any(-1)
    eye = torch.eye(steps, dtype=torch.bool, device=times.device)
    return allowed | (empty[:, :, None] & eye)


def gather_steps(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, T, ...), index long (B, Q) -> (B, Q, ...): the steps ``index`` of each row."""
    expanded = index.reshape(*index.shape, *[1] * (values.dim() - 2)).expand(-1, -1, *values.shape[2:])
    return values.gather(1, expanded)


@dataclass
class FusionOutput:
    """features: (B, T, D), or (B, T, M, D) for per-modality (late) fusion.
    extras: what the fusion can show (attention weights, gates), each with a leading (B, T)."""

    features: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class HistoryRing:
    """The last W real frames of each row, P slots per frame, with their times.

    Each stored tensor has a slot axis (``slot_dim``, 1 by default: (B, S, F); attention keys
    use 2: (B, H, S, d), the layout attention reads without a copy). slot_time long (B, S),
    slot_valid bool (B, S). Frame k of a row goes to slots [(k % W) * P, (k % W + 1) * P).
    Capacity grows by doubling up to W frames, so short histories stay small and cheap.
    """

    def __init__(
        self,
        batch: int,
        window: int,
        tokens: int,
        device: torch.device,
        initial_frames: int = 16,
        stride: int = 1,
    ) -> None:
        self.window, self.tokens, self.stride = window, tokens, stride
        self.capacity = min(window, initial_frames)  # frames
        self.count = torch.zeros(batch, dtype=torch.long, device=device)
        self.slot_time = torch.zeros(batch, self.capacity * tokens, dtype=torch.long, device=device)
        self.slot_valid = torch.zeros(batch, self.capacity * tokens, dtype=torch.bool, device=device)
        self.values: dict[str, torch.Tensor] = {}
        self.slot_dims: dict[str, int] = {}
        self._max_count = 0
        # Every row's frame count while all rows have stepped together (None once they differ):
        # the fast path's slot, known without reading ``count`` back.
        self._lockstep: int | None = 0

    @property
    def filled(self) -> int:
        """Slots in use by the fullest row: attention only needs this prefix."""
        return min(self._max_count, self.window) * self.tokens

    def _grow(self, frames: int) -> None:
        capacity = min(self.window, max(frames, 2 * self.capacity))
        extra = (capacity - self.capacity) * self.tokens

        def widen(tensor: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(tensor.shape)
            shape[dim] = extra
            return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)

        self.slot_time = widen(self.slot_time, 1)
        self.slot_valid = widen(self.slot_valid, 1)
        for name, store in self.values.items():
            self.values[name] = widen(store, self.slot_dims[name])
        self.capacity = capacity

    def append(
        self, time: torch.Tensor, valid: torch.Tensor, slot_dim: int = 1, **values: torch.Tensor
    ) -> None:
        """time long (B,), valid bool (B,), values with P along ``slot_dim``; rows with
        valid=False keep their state."""
        needed = self._max_count + 1
        if needed > self.capacity and self.capacity < self.window:
            self._grow(needed)
        all_valid = bool(valid.all())
        in_step = all_valid and self._lockstep is not None
        for name, value in values.items():
            if name not in self.values:
                shape = list(value.shape)
                shape[slot_dim] = self.capacity * self.tokens
                self.values[name] = value.new_zeros(shape)
                self.slot_dims[name] = slot_dim
        if in_step:
            # Fast path (every row real, same length): one slice write per tensor.
            start = self._lockstep % self.window * self.tokens
            stop = start + self.tokens
            for name, value in values.items():
                self.values[name].narrow(slot_dim, start, self.tokens).copy_(value)
            self.slot_time[:, start:stop] = time[:, None]
            self.slot_valid[:, start:stop] = True
        else:
            rows = torch.arange(time.shape[0], device=time.device)[:, None]
            slots = ((self.count % self.window) * self.tokens)[:, None] + torch.arange(
                self.tokens, device=time.device
            )
            keep = valid[:, None]
            for name, value in values.items():
                store = self.values[name].movedim(slot_dim, 1)  # a view: writes reach the store
                moved = value.movedim(slot_dim, 1)
                mask = keep.reshape(*keep.shape, *[1] * (moved.dim() - 2))
                store[rows, slots] = torch.where(mask, moved, store[rows, slots])
            self.slot_time[rows, slots] = torch.where(keep, time[:, None], self.slot_time[rows, slots])
            self.slot_valid[rows, slots] |= keep
        self.count += valid.long()
        if in_step:
            self._lockstep += 1
            self._max_count = needed
        elif bool(valid.any()):
            self._max_count = max(self._max_count, needed)
            self._lockstep = None if not all_valid else self._lockstep

    def reset(self, rows: torch.Tensor) -> None:
        """Forget the history of the rows where ``rows`` (bool (B,)) is True (a new episode)."""
        self.count = torch.where(rows, torch.zeros_like(self.count), self.count)
        self.slot_valid &= ~rows[:, None]
        if bool(rows.all()):
            self._lockstep = 0
        elif bool(rows.any()):
            self._lockstep = None

    def visible(self, time: torch.Tensor) -> torch.Tensor:
        """bool (B, filled): slots a query at ``time`` (B,) sees."""
        filled = self.filled
        age = time[:, None] - self.slot_time[:, :filled]
        recent = age < self.window
        if self.stride > 1:
            recent = recent & (age % self.stride == 0)
        return self.slot_valid[:, :filled] & recent

    def get(self, name: str) -> torch.Tensor:
        return self.values[name].narrow(self.slot_dims[name], 0, self.filled)

    def nbytes(self) -> int:
        tensors = [*self.values.values(), self.slot_time, self.slot_valid]
        return sum(t.numel() * t.element_size() for t in tensors)


class Fusion(nn.Module):
    """Fuses a projected instruction with projected, time-embedded frame tokens.

    ``forward`` runs a whole chunk in parallel under the visibility rule; ``step`` runs one step
    from a state made by ``initial_state``. They agree numerically.
    """

    modalities: int = 1  # > 1: features hold one vector per modality (late fusion)
    # Whether ``step``'s cache holds anything computed from the text. When it does not (the
    # frames' keys and values, a mean of frame vectors), a new instruction mid-episode changes
    # only the text the next steps read, and the cache stays valid.
    cache_reads_text: bool = True

    def __init__(self, config: FusionConfig, tokens_per_frame: int) -> None:
        super().__init__()
        self.config = config
        self.dim = config.projection_dim
        self.window = config.max_history
        self.stride = config.history_stride
        self.tokens_per_frame = tokens_per_frame

    def visibility(self, times: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """The visibility rule under this fusion's window and stride (see the module docstring)."""
        return visibility(times, frame_mask, self.window, self.stride)

    def ring(self, batch: int, tokens: int, device: torch.device) -> HistoryRing:
        """An empty history cache for ``batch`` rows under this fusion's window and stride."""
        return HistoryRing(batch, self.window, tokens, device, stride=self.stride)

    def forward(
        self,
        text: torch.Tensor,
        tokens: torch.Tensor,
        query_time: torch.Tensor,
        times: torch.Tensor,
        frame_mask: torch.Tensor,
        return_attention: bool = False,
    ) -> FusionOutput:
        """text (B, D); tokens (B, T, P, D) with key-time embedding added; query_time (B, T, D);
        times long (B, T); frame_mask bool (B, T) True = real frame."""
        raise NotImplementedError

    def forward_queries(
        self,
        text: torch.Tensor,
        tokens: torch.Tensor,
        query_time: torch.Tensor,
        times: torch.Tensor,
        frame_mask: torch.Tensor,
        index: torch.Tensor,
    ) -> FusionOutput:
        """``forward``'s features at the steps ``index`` (long (B, Q)) only: (B, Q, ...), no
        extras. This default runs every step and picks; a fusion whose outputs do not depend on
        each other (cross-attention: each step's query reads the frames, never another query)
        computes only these, with every frame still a key."""
        return FusionOutput(
            gather_steps(self.forward(text, tokens, query_time, times, frame_mask).features, index)
        )

    def initial_state(self, text: torch.Tensor) -> Any:
        raise NotImplementedError

    def step(
        self,
        state: Any,
        text: torch.Tensor,
        tokens: torch.Tensor,
        query_time: torch.Tensor,
        time: torch.Tensor,
        valid: torch.Tensor,
        return_attention: bool = False,
    ) -> FusionOutput:
        """One step: tokens (B, P, D), query_time (B, D), time long (B,), valid bool (B,).
        Returns features (B, 1, D) (or (B, 1, M, D)); the state is updated in place."""
        raise NotImplementedError

    def prefill(
        self,
        state: Any,
        text: torch.Tensor,
        tokens: torch.Tensor,
        query_time: torch.Tensor,
        times: torch.Tensor,
        valid: torch.Tensor,
    ) -> None:
        """Feed K steps into ``state`` as K ``step`` calls would, outputs unused: tokens
        (B, K, P, D), query_time (B, K, D), times long (B, K), valid bool (B, K). Fusions whose
        state does not depend on the query override this with one batched pass."""
        for k in range(tokens.shape[1]):
            self.step(state, text, tokens[:, k], query_time[:, k], times[:, k], valid[:, k])

    def reset_rows(self, state: Any, rows: torch.Tensor, text: torch.Tensor) -> None:
        """Start new episodes in the rows where ``rows`` (bool (B,)) is True; ``text`` (B, D)
        is every row's instruction after the reset. Other rows keep their history."""
        rings = state if isinstance(state, (list, tuple)) else [state]
        for ring in rings:
            ring.reset(rows)

    def combine(self, per_modality: torch.Tensor) -> torch.Tensor:
        """(..., M, K) per-modality outputs -> (..., K). Only late fusion has M > 1."""
        return per_modality.squeeze(-2)

    @staticmethod
    def state_nbytes(state: Any) -> int:
        rings = state if isinstance(state, (list, tuple)) else [state]
        return sum(r.nbytes() for r in rings if isinstance(r, HistoryRing))
