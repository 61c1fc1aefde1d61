"""Every instructcraft env passes gymnasium's own checker, which gym.make runs as usual."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import PassiveEnvChecker

import envs

IDS = [envs.CRAFTER_ID, envs.CRAFTER_OPEN_ID, envs.babyai_id("GoToLocal"), envs.babyai_id("PickupLoc")]


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes_without_warnings_and_make_keeps_the_checker(env_id: str) -> None:
    env = gym.make(env_id)
    layers = []
    wrapper = env
    while isinstance(wrapper, gym.Wrapper):
        layers.append(type(wrapper))
        wrapper = wrapper.env
    assert PassiveEnvChecker in layers
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        env.reset(seed=0)
        env.step(env.action_space.sample())
        check_env(env.unwrapped, skip_render_check=False)
