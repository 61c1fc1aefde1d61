"""What the policy trains on: one batch type for behavioral cloning and PPO, and the one BC loss.

Shape legend: B rows, L steps per row, H, W image, A action components.

A BC batch comes from the dataset's chunks (``Batch.collate`` of ``ChunkDataset`` rows); a PPO
minibatch (``train.rl.buffer.RolloutBatch``) extends it with what only PPO needs. Both name a
thing the same way, so ``bc_loss`` reads either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from policies import FactorizedCategorical, InstructionPolicy, PolicyOutput


@dataclass(kw_only=True)
class Batch:
    """B rows of L steps, the same in BC and PPO (PPO's minibatch adds its own fields)."""

    frames: torch.Tensor
    """uint8 (B, L, H, W, 3)"""
    instructions: list[str]
    """one text a row"""
    times: torch.Tensor
    """long (B, L): each step's absolute time in its episode"""
    frame_mask: torch.Tensor
    """bool (B, L): True = a real step (False = padding)"""
    actions: torch.Tensor
    """long (B, L), or (B, L, A) for a MultiDiscrete space: the actions to learn"""
    returns: torch.Tensor
    """float (B, L): discounted reward-to-go, the value head's target"""
    segments: torch.Tensor | None = None
    """long (B, L), non-decreasing along L: which episode piece of a packed row a step is in
    (None: one piece a row)"""
    tasks: list[str] = field(default_factory=list)
    """each row's task, where known (validation reports per task)"""

    @classmethod
    def collate(cls, rows: list[dict[str, Any]]) -> Batch:
        """``ChunkDataset`` rows -> one batch (the DataLoader's ``collate_fn``)."""
        stacked = {key: torch.stack([row[key] for row in rows]) for key in _ROW_TENSORS}
        return cls(
            **stacked,
            instructions=[row["instruction"] for row in rows],
            tasks=[row["task"] for row in rows],
        )

    def _map(self, convert: Any) -> Batch:
        changes = {
            item.name: convert(value)
            for item in dataclasses.fields(self)
            if isinstance(value := getattr(self, item.name), torch.Tensor)
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        """Every tensor on ``device``."""
        return self._map(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader calls it with ``pin_memory=True``)."""
        return self._map(lambda tensor: tensor.pin_memory())

    def __len__(self) -> int:
        return len(self.instructions)


# The per-row tensors of a ``ChunkDataset`` item, stacked into the batch's fields of those names.
_ROW_TENSORS = ("frames", "actions", "frame_mask", "times", "segments", "returns")


@dataclass
class BCLoss:
    """The behavioral-cloning terms of one batch, averaged over its real steps."""

    policy: torch.Tensor
    """negative log-likelihood of the batch's actions per real step (the BC loss)"""
    value: torch.Tensor
    """squared error of the value head against ``returns`` per real step"""
    log_likelihood: torch.Tensor
    """the summed log-probability of the actions over the real steps (validation totals it)"""
    distribution: FactorizedCategorical
    """the action distribution at every step (B, L)"""
    output: PolicyOutput


def bc_loss(
    model: InstructionPolicy | DistributedDataParallel,
    batch: Batch,
    *,
    autocast: str | None = None,
    keep_instructions: bool = False,
) -> BCLoss:
    """The BC terms of ``batch`` (on the model's device already). ``model``: the policy or its DDP
    wrapper (the forward must go through the wrapper for the gradients to be averaged);
    ``autocast``: the device type that runs bf16 autocast (``train.common.autocast_device``) or
    None; ``keep_instructions``: never drop an instruction (validation and PPO's auxiliary term;
    otherwise training mode applies ``instruction_dropout``)."""
    policy = model.module if isinstance(model, DistributedDataParallel) else model
    drop = torch.zeros(len(batch), dtype=torch.bool) if keep_instructions else None
    with torch.autocast(autocast or "cpu", dtype=torch.bfloat16, enabled=autocast is not None):
        output = model(
            batch.frames,
            batch.instructions,
            times=batch.times,
            frame_mask=batch.frame_mask,
            segments=batch.segments,
            drop_instruction=drop,
        )
    distribution = policy.distribution(output.logits.float())
    mask = batch.frame_mask
    steps = mask.sum().clamp_min(1)
    log_likelihood = (distribution.log_prob(batch.actions) * mask).sum()
    # The value term also keeps every output in the graph, as DDP requires.
    value = ((output.value.float() - batch.returns).square() * mask).sum() / steps
    return BCLoss(-log_likelihood / steps, value, log_likelihood, distribution, output)
