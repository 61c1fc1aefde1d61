"""``forward(query_mask=...)`` computes only the steps whose outputs are read (the PPO update's
rollout steps, not their context frames or the padding): each output equals the full forward's
at its step, for every fusion, with packed segments and context frames, and so do the gradients."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_config, random_frames

from policies import FUSIONS, InstructionPolicy

INSTRUCTIONS = ["collect wood", "eat a cow", "drink water"]


def inputs() -> dict[str, torch.Tensor]:
    """Three rows of 12 steps: context frames first, then the read steps, then padding."""
    frame_mask = torch.ones(3, 12, dtype=torch.bool)
    frame_mask[1, 9:] = False
    frame_mask[2, 5:] = False
    query_mask = torch.zeros(3, 12, dtype=torch.bool)
    query_mask[0, 6:12] = True  # six context frames, six read steps
    query_mask[1, 2:9] = True
    query_mask[2, 0:5] = True  # no context; padding after
    context_mask = frame_mask & ~query_mask
    times = (frame_mask.long().cumsum(1) - 1).clamp_min(0) + torch.tensor([[3], [0], [7]])
    return {"frame_mask": frame_mask, "query_mask": query_mask, "context_mask": context_mask, "times": times}


@pytest.mark.parametrize("fusion_type", sorted(FUSIONS))
def test_outputs_at_the_read_steps_equal_the_full_forward(fusion_type: str) -> None:
    torch.manual_seed(0)
    model = InstructionPolicy(make_tiny_config(fusion_type, max_history=4)).eval()
    frames = random_frames(3, 12, seed=2)
    given = inputs()
    query_mask = given.pop("query_mask")
    with torch.no_grad():
        full = model(frames, INSTRUCTIONS, **given)
        subset = model(frames, INSTRUCTIONS, **given, query_mask=query_mask)
    torch.testing.assert_close(subset.logits[query_mask], full.logits[query_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(subset.value[query_mask], full.value[query_mask], atol=1e-5, rtol=0)
    assert torch.equal(subset.logits[~query_mask], torch.zeros_like(subset.logits[~query_mask]))


def test_packed_segments_and_gradients_agree() -> None:
    """Two episodes packed in one row (block-causal): the read steps of both, and the gradient
    of a loss on them, equal the full forward's."""
    torch.manual_seed(0)
    frames = random_frames(2, 10, seed=3)
    segments = torch.tensor([[0] * 4 + [1] * 6, [0] * 10])
    times = torch.tensor([list(range(4)) + list(range(6)), list(range(10))])
    query_mask = torch.zeros(2, 10, dtype=torch.bool)
    query_mask[0, 2:4] = query_mask[0, 7:] = True
    query_mask[1, 5:] = True
    grads = []
    for subset in (False, True):
        torch.manual_seed(0)
        model = InstructionPolicy(make_tiny_config("cross_attention", max_history=8)).train()
        output = model(
            frames,
            INSTRUCTIONS[:2],
            times=times,
            segments=segments,
            drop_instruction=torch.zeros(2, dtype=torch.bool),
            query_mask=query_mask if subset else None,
        )
        loss = output.logits[query_mask].logsumexp(-1).sum() + output.value[query_mask].square().sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
