"""Parallel == incremental beyond the one-block tiny config: three blocks for every fusion, gated
cross-attention with open gates, holes inside the frame mask, cache growth for every fusion, and
the shipped default config (two blocks, the pretrained MiniLM text encoder)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_parity, make_tiny_config, random_frames

from policies import FUSIONS, InstructionPolicy, PolicyConfig

ALL = sorted(FUSIONS)
INSTRUCTIONS = ["collect wood", "eat a cow", "drink water"]


def holed_mask(batch: int, steps: int) -> torch.Tensor:
    """bool (B, T): skipped steps inside the history, not only at the edges."""
    mask = torch.ones(batch, steps, dtype=torch.bool)
    mask[0, 3] = False
    mask[1, 5:7] = False
    if batch > 2:
        mask[2, :2] = False
        mask[2, 7] = False
    return mask


def config(fusion_type: str, blocks: int, **fusion: object):
    return make_tiny_config(fusion_type, **fusion).replace(**{"fusion_kwargs.num_blocks": blocks})


@pytest.mark.parametrize("fusion_type", ALL)
def test_three_blocks_with_holes_in_the_mask(fusion_type: str) -> None:
    """T=11 > max_history=4, so the window slides across the holes too."""
    torch.manual_seed(0)
    model = InstructionPolicy(config(fusion_type, 3, max_history=4)).eval()
    assert_parity(model, random_frames(3, 11, seed=1), holed_mask(3, 11), INSTRUCTIONS)


def test_gated_cross_attention_with_open_gates() -> None:
    torch.manual_seed(0)
    model = InstructionPolicy(config("cross_attention", 3, gated=True, max_history=4)).eval()
    gates = [p for name, p in model.named_parameters() if name.endswith("_gate")]
    assert len(gates) == 6  # attention and MLP gate in each block
    with torch.no_grad():  # they start at 0 (each block the identity): open them
        for gate in gates:
            gate.uniform_(0.3, 1.0)
    assert_parity(model, random_frames(3, 11, seed=2), holed_mask(3, 11), INSTRUCTIONS)


@pytest.mark.parametrize("fusion_type", ALL)
def test_parity_through_cache_growth_for_every_fusion(fusion_type: str) -> None:
    """The cache starts small, grows up to max_history=20 and wraps around, with holes."""
    torch.manual_seed(0)
    model = InstructionPolicy(config(fusion_type, 2, max_history=20)).eval()
    mask = torch.ones(2, 45, dtype=torch.bool)
    mask[0, 17:19] = False
    mask[1, 30] = False
    assert_parity(model, random_frames(2, 45, seed=7), mask, INSTRUCTIONS[:2])


def test_shipped_default_config() -> None:
    """The defaults a user gets: two blocks, projection_dim 128, 16 tokens a frame, MiniLM."""
    config = PolicyConfig()
    assert (config.fusion_kwargs.num_blocks, config.text.encoder) == (2, "minilm")
    torch.manual_seed(0)
    model = InstructionPolicy(config).eval()
    generator = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (2, 9, 64, 64, 3), dtype=torch.uint8, generator=generator)
    assert_parity(model, frames, holed_mask(2, 9), INSTRUCTIONS[:2])
