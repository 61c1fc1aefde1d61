from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import make_tiny_config

import envs
from agent import Agent
from policies import CheckpointError, InstructionPolicy


def crafter_config(fusion_type: str = "cross_attention"):
    return make_tiny_config(fusion_type).replace(
        **{"vision.image_size": [64, 64], "vision.channels": [8, 16, 16]}
    )


def checkpoint(tmp_path: Path, fusion_type: str = "cross_attention") -> Path:
    torch.manual_seed(0)
    return InstructionPolicy(crafter_config(fusion_type)).save_pretrained(tmp_path / fusion_type)


@pytest.mark.parametrize("fusion_type", ["cross_attention", "self_attention", "gmu", "late"])
def test_agent_acts_in_crafter_and_matches_the_parallel_path(tmp_path: Path, fusion_type: str) -> None:
    """Every step's logits equal the parallel path's over the same frames and instruction: a step
    that forgot the history or read another instruction would differ (chosen actions often do not)."""
    agent = Agent.from_pretrained(checkpoint(tmp_path, fusion_type), seed=0)
    env = gym.make(envs.CRAFTER_ID, task="collect_wood")
    agent.check_env(env)
    obs, info = env.reset(seed=0)
    agent.reset(info["instruction"])
    frames, actions, logits = [], [], []
    for _ in range(6):
        frames.append(obs["image"])
        action = agent.act(obs, deterministic=True)
        assert env.action_space.contains(action)
        actions.append(action)
        logits.append(agent.last_logits[0])
        obs, *_ = env.step(action)
    batch = torch.from_numpy(np.stack(frames))[None]
    with torch.no_grad():
        parallel = agent.policy(batch, [info["instruction"]]).logits[0]
        other = agent.policy(batch, ["collect a sapling"]).logits[0]
    torch.testing.assert_close(torch.stack(logits), parallel, atol=1e-5, rtol=0)
    assert actions == parallel.argmax(-1).tolist()
    assert not torch.allclose(other, parallel, atol=1e-4)  # the comparison can tell instructions apart
    assert agent.step_count == 6 and len(agent.history) == 6


def test_attention_in_time_order_and_normalised(tmp_path: Path) -> None:
    agent = Agent.from_pretrained(checkpoint(tmp_path), capture_attention=True)
    env = gym.make(envs.CRAFTER_ID, task="eat_cow")
    obs, info = env.reset(seed=1)
    agent.reset(info["instruction"])
    for step in range(5):
        agent.act(obs)
        attention = agent.attention()
        assert attention["frame_times"].tolist() == list(range(step + 1))
        weights = attention["weights"]  # (blocks, heads, frames, tokens)
        assert weights.shape == (1, 2, step + 1, 4)
        np.testing.assert_allclose(weights.sum(axis=(2, 3)), 1.0, atol=1e-5)
        obs, *_ = env.step(0)
    assert 0.0 < agent.last_action_probability() <= 1.0


def test_instruction_from_the_observation_and_reset_required(tmp_path: Path) -> None:
    agent = Agent.from_pretrained(checkpoint(tmp_path))
    env = gym.make(envs.CRAFTER_ID, task="collect_drink")
    obs, info = env.reset(seed=2)
    with pytest.raises(RuntimeError, match=r"call agent.reset\(instruction\)"):
        agent.act(obs)
    agent.reset()
    agent.act(obs)
    assert agent.instruction == info["instruction"]


def test_guidance_rebuilds_the_null_branch_from_history(tmp_path: Path) -> None:
    """Guidance asked for only at step 4 rebuilds the null-instruction branch from the 4 frames
    already seen: its logits equal guidance computed from two parallel runs over the same
    frames, one with the instruction and one with the null instruction."""
    path = checkpoint(tmp_path)
    env = gym.make(envs.CRAFTER_ID, task="collect_wood")
    late = Agent.from_pretrained(path, seed=0)  # asks for guidance only at step 4
    early = Agent.from_pretrained(path, seed=0)  # guidance from the start
    obs, info = env.reset(seed=3)
    late.reset(info["instruction"])
    early.reset(info["instruction"])
    frames, guided = [], []
    for step in range(6):
        frames.append(obs["image"])
        scale = 2.0 if step >= 4 else 0.0
        a = late.act(obs, deterministic=True, cfg_scale=scale)
        early.act(obs, deterministic=True, cfg_scale=2.0 if step >= 4 else 1e-9)
        if step >= 4:
            guided.append(late.last_logits[0])
            torch.testing.assert_close(late.last_logits, early.last_logits, atol=1e-5, rtol=0)
        obs, *_ = env.step(a)
    assert late.cache_nbytes() > 0
    policy = late.policy
    batch = torch.from_numpy(np.stack(frames))[None]
    with torch.no_grad():
        conditional = policy(batch, [info["instruction"]]).logits[0, 4:]
        null = policy(batch, [None]).logits[0, 4:]
        fresh = policy(batch[:, 4:], [None]).logits[0]  # a null branch that forgot the history
    expected = policy.guided(conditional, null, 2.0)
    torch.testing.assert_close(torch.stack(guided), expected, atol=1e-5, rtol=0)
    unguided = conditional.log_softmax(-1)
    assert (torch.stack(guided) - unguided).abs().max() > 1e-3, "guidance changed nothing"
    # The check above tells apart a null branch without history or with the real instruction:
    assert (policy.guided(conditional, fresh, 2.0) - expected).abs().max() > 1e-4
    assert (policy.guided(conditional, conditional, 2.0) - expected).abs().max() > 1e-4


def test_action_space_mismatch_is_reported(tmp_path: Path) -> None:
    agent = Agent.from_pretrained(checkpoint(tmp_path))
    env = gym.make(envs.babyai_id("GoToLocal"))
    with pytest.raises(CheckpointError, match=r"'n': 17\} but the env has \{'type': 'Discrete', 'n': 7\}"):
        agent.check_env(env)


def test_bad_image_is_reported(tmp_path: Path) -> None:
    agent = Agent.from_pretrained(checkpoint(tmp_path))
    agent.reset("collect wood")
    with pytest.raises(ValueError, match=r"expected image \(64, 64, 3\) uint8, got \(32, 32, 3\) uint8"):
        agent.act({"image": np.zeros((32, 32, 3), np.uint8)})


def test_attention_needs_capture(tmp_path: Path) -> None:
    agent = Agent.from_pretrained(checkpoint(tmp_path))
    agent.reset("collect wood")
    agent.act({"image": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(RuntimeError, match="capture_attention=True"):
        agent.attention()


def test_crafter_score_matches_the_published_formula() -> None:
    from agent.evaluate import crafter_score

    # Two achievements, unlocked in 50% and 0% of episodes: exp((ln 51 + ln 1) / 2) - 1.
    out = crafter_score([["collect_wood"], []], ["collect_wood", "place_table"])
    assert out["achievement_rates_percent"] == {"collect_wood": 50.0, "place_table": 0.0}
    assert out["crafter_score"] == pytest.approx(51**0.5 - 1)
    assert crafter_score([["a", "b"]], ["a", "b"])["crafter_score"] == pytest.approx(100.0)


def test_acting_passes_only_the_image_so_reset_decides_the_instruction() -> None:
    torch.manual_seed(0)
    agent = Agent(InstructionPolicy(make_tiny_config()), seed=0)
    act = agent.acting(deterministic=True)
    image = np.zeros((16, 16, 3), np.uint8)
    agent.reset(None)  # the learned null instruction, whatever the env's observation says
    action = act({"image": image, "instruction": "go left"}, {"instruction": "go left"})
    assert agent.instruction is None
    reference = Agent(agent.policy, seed=0)
    reference.reset(None)
    assert action == reference.act({"image": image}, deterministic=True)
    torch.testing.assert_close(agent.last_logits, reference.last_logits)
