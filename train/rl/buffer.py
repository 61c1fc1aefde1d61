"""The rollout storage of the sequence PPO and how the update reads it: SB3's rollout buffer
plus step times and per-env context frames, the cut of each env's rollout into episode
segments, their packing into minibatches of about ``batch_size`` steps, the padding of a
minibatch into (S, L) tensors, and the KL term toward a reference policy.

Shape legend: N envs, S segments in a minibatch, L steps per segment (context included),
H, W, 3 image, K sum of action sizes.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer

from train.batch import Batch
from train.rl.policy import SB3PolicyAdapter


class SequenceRolloutBuffer(DictRolloutBuffer):
    """SB3's Dict rollout buffer plus each step's absolute time in its episode and, per env,
    the frames of the running episode from before the rollout (context for the update)."""

    def reset(self) -> None:
        super().reset()
        self.times = np.zeros((self.buffer_size, self.n_envs), np.int64)
        self.context: list[dict[str, Any]] = [{"frames": [], "times": []} for _ in range(self.n_envs)]

    def padded_batch(
        self,
        segments: list[Segment],
        adapter: SB3PolicyAdapter,
        context_features: dict[int, torch.Tensor] | None = None,
        context_frames: bool = True,
    ) -> RolloutBatch:
        """Pad the segments (context + rollout steps) into (S, L) tensors on the buffer's device;
        with ``context_features`` ({env: (C_env, P, C)}), also the context frames' encodings, and
        then ``context_frames=False`` leaves the context's pixels out (zeros: the forward reads
        the encodings instead; up to ``max_history - 1`` frames a row not copied every epoch).
        ``adapter`` converts the stored observations (frames, instruction texts)."""
        images = self.observations["image"]
        length = max(s.context + s.steps for s in segments)
        count = len(segments)
        first = adapter.frames(images[0, :1])
        frames = torch.zeros(count, length, *first.shape[1:], dtype=torch.uint8)
        times = torch.zeros(count, length, dtype=torch.long)
        frame_mask = torch.zeros(count, length, dtype=torch.bool)
        loss_mask = torch.zeros(count, length, dtype=torch.bool)
        action_shape = self.actions.shape[2:]
        actions = torch.zeros(count, length, *action_shape, dtype=torch.long)
        fields = {name: torch.zeros(count, length) for name in ("log_prob", "advantages", "returns")}
        texts = []
        features = None
        if context_features:
            shape = next(iter(context_features.values())).shape[1:]
            features = torch.zeros(count, length, *shape, device=self.device)
        for row, seg in enumerate(segments):
            ctx = seg.context  # all the context frames of that env, or none
            if ctx:
                context = self.context[seg.env]
                if context_frames or features is None:
                    frames[row, :ctx] = torch.from_numpy(np.stack(context["frames"]))
                times[row, :ctx] = torch.tensor(context["times"])
                if features is not None:
                    features[row, :ctx] = context_features[seg.env]
            span = slice(ctx, ctx + seg.steps)
            frames[row, span] = adapter.frames(images[seg.start : seg.stop, seg.env])
            times[row, span] = torch.from_numpy(self.times[seg.start : seg.stop, seg.env])
            frame_mask[row, : ctx + seg.steps] = True
            loss_mask[row, span] = True
            actions[row, span] = torch.from_numpy(self.actions[seg.start : seg.stop, seg.env]).long()
            fields["log_prob"][row, span] = torch.from_numpy(self.log_probs[seg.start : seg.stop, seg.env])
            fields["advantages"][row, span] = torch.from_numpy(self.advantages[seg.start : seg.stop, seg.env])
            fields["returns"][row, span] = torch.from_numpy(self.returns[seg.start : seg.stop, seg.env])
            ids = self.observations["instruction_ids"][seg.start, seg.env][None]
            mask = self.observations["instruction_mask"][seg.start, seg.env][None]
            texts.append(adapter.instructions(ids, mask)[0])
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions[..., 0]
        device = self.device
        return RolloutBatch(
            frames=frames.to(device),
            instructions=texts,
            times=times.to(device),
            frame_mask=frame_mask.to(device),
            actions=actions.to(device),
            returns=fields["returns"].to(device),
            loss_mask=loss_mask.to(device),
            old_log_prob=fields["log_prob"].to(device),
            advantages=fields["advantages"].to(device),
            context_features=features,
        )


@dataclasses.dataclass(kw_only=True)
class RolloutBatch(Batch):
    """A PPO minibatch: S segments (context frames, then rollout steps) padded to L steps, in
    ``Batch``'s fields (one segment a row, so no ``segments``) plus what the PPO loss reads."""

    loss_mask: torch.Tensor
    """bool (S, L): the rollout steps (the loss is taken there; context and padding are not)"""
    old_log_prob: torch.Tensor
    """float (S, L): the rollout policy's log-probability of each action"""
    advantages: torch.Tensor
    """float (S, L)"""
    context_features: torch.Tensor | None = None
    """(S, L, P, C): the context frames' encodings, computed once per update (None: not given)"""


@dataclasses.dataclass
class Segment:
    env: int
    start: int  # first rollout step
    stop: int  # one past the last rollout step
    context: int  # context frames before ``start``

    @property
    def steps(self) -> int:
        return self.stop - self.start


def split_segments(episode_starts: np.ndarray, context_lengths: list[int]) -> list[Segment]:
    """episode_starts (n_steps, N) (SB3: True = the step's observation opens an episode) ->
    one segment per (env, episode piece); only a piece that continues an episode from before
    the rollout gets context."""
    n_steps, n_envs = episode_starts.shape
    segments = []
    for env in range(n_envs):
        cuts = [0, *[t for t in range(1, n_steps) if episode_starts[t, env]], n_steps]
        for index, (start, stop) in enumerate(itertools.pairwise(cuts)):
            continues = index == 0 and not episode_starts[0, env]
            segments.append(Segment(env, start, stop, context_lengths[env] if continues else 0))
    return segments


def pack_minibatches(
    segments: list[Segment], batch_size: int, rng: np.random.Generator
) -> list[list[Segment]]:
    """Shuffle segments and fill minibatches up to ``batch_size`` loss steps each."""
    order = rng.permutation(len(segments))
    batches: list[list[Segment]] = [[]]
    filled = 0
    for index in order:
        segment = segments[index]
        if filled and filled + segment.steps > batch_size:
            batches.append([])
            filled = 0
        batches[-1].append(segment)
        filled += segment.steps
    return [batch for batch in batches if batch]


def kl_divergence(logits: torch.Tensor, reference: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """KL(policy || reference) per step, summed over the action components: (..., K) -> (...)."""
    total = 0
    for part, ref in zip(logits.split(list(sizes), -1), reference.split(list(sizes), -1), strict=True):
        log_p, log_q = part.log_softmax(-1), ref.log_softmax(-1)
        total = total + (log_p.exp() * (log_p - log_q)).sum(-1)
    return total
