"""Every registered env, raw and wrapped, against both checkers; seeding, pickling, limits."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.wrappers import FrameHistory, TokenizeInstruction, wrap_for_sb3

ALL_IDS = envs.registered_ids()


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_gymnasium_check_env_raw(env_id: str) -> None:
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=False)
    obs, info = env.reset(seed=3)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["instruction"] == info["instruction"] != ""
    assert info["success"] is False and isinstance(info["task"], str)


@pytest.mark.parametrize("env_id", ALL_IDS)
@pytest.mark.parametrize("stack_channels", [False, True])
def test_check_env_wrapped_both_checkers(env_id: str, stack_channels: bool) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*different from the unwrapped.*")
        check_env(wrap_for_sb3(gym.make(env_id), stack_channels=stack_channels))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(wrap_for_sb3(gym.make(env_id)))
    assert not [str(w.message) for w in caught if "stable_baselines3" in str(w.filename)]


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_seeding_is_deterministic(env_id: str) -> None:
    def rollout(seed: int) -> tuple[list[np.ndarray], str]:
        env = gym.make(env_id)
        env.action_space.seed(0)
        obs, info = env.reset(seed=seed)
        frames = [obs["image"]]
        for _ in range(20):
            obs, *_ = env.step(env.action_space.sample())
            frames.append(obs["image"])
        return frames, info["instruction"]

    a, instruction_a = rollout(7)
    b, instruction_b = rollout(7)
    assert instruction_a == instruction_b
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c, _ = rollout(8)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("env_id", [envs.CRAFTER_ID, envs.babyai_id("GoToLocal")])
def test_pickle_round_trip_continues_identically(env_id: str) -> None:
    env = gym.make(env_id)
    env.reset(seed=1)
    for _ in range(5):
        env.step(1)
    clone = pickle.loads(pickle.dumps(env))
    for action in [2, 2, 1, 0, 2]:
        a = env.step(action)
        b = clone.step(action)
        assert np.array_equal(a[0]["image"], b[0]["image"]) and a[1:4] == b[1:4]


@pytest.mark.parametrize("env_id", [envs.CRAFTER_ID, envs.babyai_id("GoToLocal")])
def test_render_sizes(env_id: str) -> None:
    env = gym.make(env_id, render_size=(128, 128))
    obs, _ = env.reset(seed=0)
    assert env.render().shape == (128, 128, 3)
    assert obs["image"].shape == (64, 64, 3)


def test_wrappers_pickle() -> None:
    env = FrameHistory(TokenizeInstruction(gym.make(envs.CRAFTER_ID)), 3)
    env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(env))
    assert np.array_equal(clone.step(0)[0]["frames"], env.step(0)[0]["frames"])


def test_every_registered_id_has_its_kind() -> None:
    from envs.experts import EXPERTS, default_expert_for

    for env_id in envs.registered_ids():
        kind = envs.env_kind(env_id)
        assert kind.family in ("crafter", "babyai", "minerl"), env_id
        assert kind.expert is None or kind.expert in EXPERTS
        if kind.family == "minerl":
            continue  # making a MineRL env needs its Java build
        base = gym.make(env_id).unwrapped
        # The kind says what the env does: reset(options={"task": ...}) picks among its tasks.
        assert kind.task_choice == (hasattr(base, "tasks") and not getattr(base, "open_ended", False)), env_id
    assert envs.env_kind(envs.CRAFTER_ID).family == envs.env_kind(envs.CRAFTER_OPEN_ID).family == "crafter"
    assert (
        default_expert_for(envs.CRAFTER_ID) == default_expert_for(envs.CRAFTER_OPEN_ID) == "crafter_planner"
    )
    assert default_expert_for(envs.babyai_id("GoTo")) == "babyai_bot"


def test_ids_registered_elsewhere_are_of_kind_other() -> None:
    from envs.experts import default_expert_for

    assert envs.env_kind("CartPole-v1") == envs.OTHER
    # Looked up, not guessed from the spelling.
    assert envs.env_kind("MyCrafter-v0").family == "other"
    with pytest.raises(ValueError, match="no expert known for env 'CartPole-v1'; pass --expert"):
        default_expert_for("CartPole-v1")
