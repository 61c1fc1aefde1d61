"""reset and step return the same info keys, so recorders that stack infos (Minari's
DataCollector with record_infos=True) work on every env."""

from __future__ import annotations

import gymnasium as gym
import pytest

import envs

IDS = [envs.CRAFTER_ID, envs.CRAFTER_OPEN_ID, envs.babyai_id("GoToLocal")]


@pytest.mark.parametrize("env_id", IDS)
def test_reset_and_step_infos_have_the_same_keys(env_id: str) -> None:
    env = gym.make(env_id)
    _, reset_info = env.reset(seed=0)
    _, _, _, _, step_info = env.step(env.action_space.sample())
    assert set(reset_info) == set(step_info)


@pytest.mark.parametrize("env_id", IDS)
def test_infos_pass_the_check_minaris_data_collector_applies(env_id: str) -> None:
    """DataCollector(record_infos=True) refuses an episode whose step infos differ from the
    reset's in keys or value types; this is its own check (running DataCollector itself needs
    jax, from minari's `create` extra)."""
    collector = pytest.importorskip("minari.data_collector.data_collector")
    env = gym.make(env_id, step_limit=3) if "Crafter" in env_id else gym.make(env_id)
    _, first = env.reset(seed=1)
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert collector._check_infos_same_shape(first, info)
        done = terminated or truncated
