from __future__ import annotations

import gymnasium as gym
import pytest

import envs
from envs.babyai import LEVELS
from envs.data.collect import run_episode
from envs.experts import make_expert


def test_required_levels_registered() -> None:
    for level in ["GoToRedBall", "GoToLocal", "PickupLoc", "PutNextLocal", "GoTo"]:
        assert level in LEVELS and envs.babyai_id(level) in gym.registry


def test_mission_is_instruction_and_space_is_the_levels_own() -> None:
    env = gym.make(envs.babyai_id("GoToLocal"))
    obs, info = env.reset(seed=0)
    assert obs["instruction"] == env.unwrapped.unwrapped_level.mission == info["instruction"]
    assert env.action_space == gym.make("BabyAI-GoToLocal-v0").action_space


def test_minigrid_chatter_does_not_reach_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    env = gym.make(envs.babyai_id("GoTo"))
    for seed in range(40):
        env.reset(seed=seed)
    out, _ = capfd.readouterr()
    assert "Sampling rejected" not in out and "Timeout" not in out


def test_bot_success_sets_info_and_terminates() -> None:
    env = gym.make(envs.babyai_id("GoToLocal"))
    episode = run_episode(env, make_expert("babyai_bot"), 0, None, "x")
    assert episode.success and episode.terminated[-1] and episode.rewards[-1] > 0


def test_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown BabyAI level 'Fly'"):
        envs.babyai.BabyAIInstructEnv(level="Fly")
