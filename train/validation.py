"""Held-out validation for behavioral cloning: loss and accuracy on episodes never trained on.

It tells underfitting (validation loss high, accuracy low) apart from compounding error (the
policy predicts the expert well on the expert's own states, yet fails in rollouts, where its
own mistakes lead to states the data never shows). The same steps read again with each row's
instruction swapped for another one tell whether the policy uses the instruction at all: equal
accuracies mean it acts on the frames alone.

Shape legend: B rows, L steps per row, A action components.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from envs.data.store import Dataset
from policies import InstructionPolicy
from train.batch import Batch, bc_loss
from train.data import ChunkDataset, trainable


def split_episodes(dataset: Dataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) episode indices: whole episodes, never steps, so no validation step
    has a training step of its own episode beside it. Only trainable episodes are held out."""
    usable = [i for i, entry in enumerate(dataset.episodes) if trainable(entry, only_success=True)]
    # At least one episode when asked for any, and never all of them.
    count = min(max(round(fraction * len(usable)), 1), len(usable) - 1) if fraction > 0 else 0
    held = set(np.random.default_rng([seed, 4_242]).permutation(usable)[:count].tolist())
    return [i for i in range(len(dataset)) if i not in held], sorted(held)


def action_names(env_id: str) -> list[str] | None:
    """The env's action names when it has them (Crafter-Instruct does), else None."""
    try:
        import gymnasium as gym

        import envs  # noqa: F401  (registers the ids)

        names = getattr(gym.make(env_id).unwrapped, "action_names", None)
    except Exception:  # an id from another machine's registry: plain indices are fine
        return None
    return list(names) if names is not None else None


def swapped_instructions(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """{(task, instruction): another instruction} for every pair given: one of another task when
    there is another task (a paraphrase of the same task is not a swap), else another
    instruction; deterministic (the list is sorted, the choice cycles through it). Pairs with
    nothing to swap with are left out."""
    ordered = sorted(set(pairs))
    swaps = {}
    for position, (task, instruction) in enumerate(ordered):
        others = [text for other, text in ordered if other != task] or [
            text for _, text in ordered if text != instruction
        ]
        if others:
            swaps[(task, instruction)] = others[position % len(others)]
    return swaps


@torch.no_grad()
def validate(
    policy: InstructionPolicy,
    rows: ChunkDataset,
    batch_size: int,
    device: str,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Loss (nats per step), accuracy of the most likely action per head, per expert action
    (recall: how often the label is predicted when it is the label) and per task, over every
    step of ``rows``, with the instruction always given; and the loss and accuracy (all heads
    right) with each row's instruction swapped (``swapped_instructions``), when the rows hold
    more than one instruction."""
    was_training = policy.training
    policy.eval()
    total_log_prob, steps = 0.0, 0
    head_hits: np.ndarray | None = None
    per_action: dict[int, list[int]] = {}
    per_task: dict[str, list[int]] = {}
    # Swaps come from every instruction of the dataset (index entries: nothing decoded), so a
    # small validation split of one instruction still gets one.
    swaps = swapped_instructions([(entry["task"], entry["instruction"]) for entry in rows.data.episodes])
    swapped_log_prob, swapped_hits = 0.0, 0
    try:
        for start in range(0, len(rows), batch_size):
            batch = Batch.collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            batch = batch.to(device)
            mask, actions = batch.frame_mask, batch.actions
            given = bc_loss(policy, batch, keep_instructions=True)
            total_log_prob += float(given.log_likelihood)
            steps += int(mask.sum())
            mode = given.distribution.mode()
            if mode.dim() == mask.dim():  # one component: (B, L) -> (B, L, 1)
                mode, actions = mode[..., None], actions[..., None]
            hits = (mode == actions) & mask[..., None]  # (B, L, A)
            counts = hits.sum((0, 1)).cpu().numpy()
            head_hits = counts if head_hits is None else head_hits + counts
            first_hit = hits[..., 0][mask].cpu().numpy()
            first_label = actions[..., 0][mask].cpu().numpy()
            for label, hit in zip(first_label.tolist(), first_hit.tolist(), strict=True):
                per_action.setdefault(label, [0, 0])[0] += int(hit)
                per_action[label][1] += 1
            all_hit = hits.all(-1)
            for row, task in enumerate(batch.tasks):
                entry = per_task.setdefault(task, [0, 0])
                entry[0] += int(all_hit[row][mask[row]].sum())
                entry[1] += int(mask[row].sum())
            if swaps:
                texts = [swaps[pair] for pair in zip(batch.tasks, batch.instructions, strict=True)]
                other = bc_loss(
                    policy, dataclasses.replace(batch, instructions=texts), keep_instructions=True
                )
                swapped_log_prob += float(other.log_likelihood)
                other_mode = other.distribution.mode()
                if other_mode.dim() == mask.dim():
                    other_mode = other_mode[..., None]
                swapped_hits += int(((other_mode == actions).all(-1) & mask).sum())
    finally:
        policy.train(was_training)

    def label(action: int) -> str:
        return names[action] if names is not None and action < len(names) else str(action)

    return {
        "steps": steps,
        "episodes": len({number for row in rows.rows for number, _, _ in row}),
        "loss": -total_log_prob / max(steps, 1),
        "accuracy_heads": [float(h) / max(steps, 1) for h in (head_hits if head_hits is not None else [])],
        "accuracy_actions": {
            label(action): {"accuracy": hit / count, "steps": count}
            for action, (hit, count) in sorted(per_action.items())
        },
        "accuracy_tasks": {task: hit / count for task, (hit, count) in sorted(per_task.items())},
        # Every head right, with the true and with a swapped instruction (None: nothing to swap).
        "accuracy": sum(hit for hit, _ in per_task.values()) / max(steps, 1),
        "accuracy_swapped": swapped_hits / max(steps, 1) if swaps else None,
        "loss_swapped": -swapped_log_prob / max(steps, 1) if swaps else None,
    }


def log_validation(writer: Any, result: dict[str, Any], step: int) -> None:
    writer.add_scalar("val/loss", result["loss"], step)
    for head, accuracy in enumerate(result["accuracy_heads"]):
        writer.add_scalar(f"val/accuracy_head{head}", accuracy, step)
    for name, entry in result["accuracy_actions"].items():
        writer.add_scalar(f"val/accuracy_action/{name}", entry["accuracy"], step)
    for task, accuracy in result["accuracy_tasks"].items():
        writer.add_scalar(f"val/accuracy_task/{task}", accuracy, step)
    if result["accuracy_swapped"] is not None:
        writer.add_scalar("val/accuracy", result["accuracy"], step)
        writer.add_scalar("val/accuracy_swapped", result["accuracy_swapped"], step)
        writer.add_scalar("val/loss_swapped", result["loss_swapped"], step)
