"""The cross-attention fusion's recency bias (fusion_kwargs.recency_bias, ALiBi's linear bias)."""

import json

import pytest
import torch
from helpers import assert_parity, make_tiny_config, random_frames

from policies.config import ConfigError, FusionConfig, PolicyConfig
from policies.persist import with_legacy_defaults
from policies.policy import InstructionPolicy

INSTRUCTIONS = ["collect wood", "drink water", "place a table"]


def holed_mask(batch: int, steps: int) -> torch.Tensor:
    mask = torch.ones(batch, steps, dtype=torch.bool)
    mask[0, 3] = False
    mask[-1, steps - 2 :] = False
    return mask


@pytest.mark.parametrize("window", [4, 20])
def test_step_matches_forward_with_the_bias(window: int) -> None:
    """The incremental path reads ages from the cache's slot times; the parallel path from the
    chunk's times: both give the same outputs, through cache growth and wrap-around."""
    torch.manual_seed(0)
    config = make_tiny_config(max_history=window, recency_bias=True).replace(
        **{"fusion_kwargs.num_blocks": 2}
    )
    model = InstructionPolicy(config).eval()
    with torch.no_grad():  # slopes away from their initial values, different per block
        for block in model.fusion.blocks:
            block.log_slope.add_(torch.randn_like(block.log_slope))
    assert_parity(model, random_frames(3, 30, seed=5), holed_mask(3, 30), INSTRUCTIONS)


def test_a_fresh_model_reads_the_present_frame_most() -> None:
    """Head 0 starts at a slope of 1 per step: of 8 frames, the present one gets the most weight;
    without the bias the same weights spread over the frames."""
    frames = random_frames(1, 8, seed=2)
    present = {}
    for bias in (False, True):
        torch.manual_seed(0)
        model = InstructionPolicy(make_tiny_config(max_history=8, recency_bias=bias)).eval()
        with torch.no_grad():
            out = model(frames, INSTRUCTIONS[:1], return_attention=True)
        # (B, T, blocks, H, T_key, P): the last step's head 0, summed over each frame's tokens.
        per_frame = out.extras["attention"][0, -1, 0, 0].sum(-1)
        present[bias] = float(per_frame[-1])
        if bias:
            assert int(per_frame.argmax()) == 7
            assert per_frame[-1] > 0.5
    assert present[True] > present[False] + 0.2


def test_the_bias_is_trained() -> None:
    model = InstructionPolicy(make_tiny_config(max_history=4, recency_bias=True))
    frames = random_frames(2, 6, seed=1)
    out = model(frames, INSTRUCTIONS[:2])
    out.logits.sum().backward()
    grad = model.fusion.blocks[0].log_slope.grad
    assert grad is not None and bool(grad.abs().sum() > 0)


def test_only_cross_attention_takes_it() -> None:
    with pytest.raises(ConfigError, match=r"recency_bias.*cross_attention"):
        FusionConfig(fusion_type="self_attention", recency_bias=True)


def test_a_checkpoint_written_before_the_field_loads_with_it_off() -> None:
    """A checkpoint's config names every field, except fields added after it was written, which
    take the behaviour its weights were trained with."""
    data = json.loads(PolicyConfig().to_json())
    del data["fusion_kwargs"]["recency_bias"]
    assert (
        PolicyConfig.from_dict(with_legacy_defaults(data), complete=True).fusion_kwargs.recency_bias is False
    )
    with pytest.raises(ConfigError, match="recency_bias is missing"):
        PolicyConfig.from_dict(data, complete=True)


def test_the_shipped_agent_loads_and_acts_as_before() -> None:
    """pretrained:crafter-all was trained before the field: it loads with the bias off."""
    from agent.agent import Agent

    agent = Agent.from_pretrained("pretrained:crafter-all")
    assert agent.policy.config.fusion_kwargs.recency_bias is False
    assert not hasattr(agent.policy.fusion.blocks[0], "log_slope")
