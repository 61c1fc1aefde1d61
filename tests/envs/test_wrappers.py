from __future__ import annotations

from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import envs
from envs.wrappers import (
    ByteTokenizer,
    FrameHistory,
    TokenizeInstruction,
    make_sb3_env,
    make_vector_env,
    wrap_for_sb3,
)

TASKS = ["collect_wood", "collect_drink", "eat_cow"]


def crafter(task: str, step_limit: int = 6) -> gym.Env:
    return gym.make(envs.CRAFTER_ID, task=task, step_limit=step_limit)


def test_tokenize_bytes_round_trip_and_mask() -> None:
    env = TokenizeInstruction(crafter("eat_cow"), ByteTokenizer(), max_tokens=40)
    obs, info = env.reset(seed=0)
    assert "instruction" not in obs
    assert obs["instruction_ids"].dtype == np.int64 and obs["instruction_ids"].shape == (40,)
    n = len(info["instruction"])
    assert obs["instruction_mask"].tolist() == [1] * n + [0] * (40 - n)
    assert ByteTokenizer().decode(obs["instruction_ids"]) == info["instruction"]
    assert env.observation_space.contains(obs)


def test_tokenize_with_pretrained_tokenizer(hf_tokenizer) -> None:
    env = TokenizeInstruction(crafter("collect_drink"), hf_tokenizer, max_tokens=16, keep_text=True)
    obs, info = env.reset(seed=0)
    expected = hf_tokenizer(info["instruction"])["input_ids"]
    assert obs["instruction_ids"][: len(expected)].tolist() == expected
    assert obs["instruction_mask"].sum() == len(expected)
    assert env.observation_space["instruction_ids"].high.max() == hf_tokenizer.vocab_size - 1
    assert obs["instruction"] == info["instruction"]


def test_tokenize_overflow_is_an_error_or_truncated() -> None:
    long = "please " * 10 + "collect wood"
    env = TokenizeInstruction(crafter("collect_wood"), max_tokens=8)
    with pytest.raises(
        ValueError, match=r"has 82 tokens, more than max_tokens=8: raise max_tokens or pass truncate=True"
    ):
        env.reset(seed=0, options={"instruction": long})
    env = TokenizeInstruction(crafter("collect_wood"), max_tokens=8, truncate=True)
    obs, _ = env.reset(seed=0, options={"instruction": long})
    assert ByteTokenizer().decode(obs["instruction_ids"]) == long[:8]
    assert obs["instruction_mask"].all()


def test_tokenize_needs_text_observation() -> None:
    env = TokenizeInstruction(crafter("collect_wood"))
    with pytest.raises(ValueError, match="needs a Dict observation with 'instruction'"):
        TokenizeInstruction(env)


def test_frame_history_order_mask_and_reset() -> None:
    env = FrameHistory(crafter("place_stone", step_limit=100), k=3, keep_image=True)
    obs, _ = env.reset(seed=0)
    assert obs["frame_mask"].tolist() == [0, 0, 1]
    assert np.array_equal(obs["frames"][-1], obs["image"]) and not obs["frames"][:2].any()
    images = [obs["image"]]
    for action in [1, 2, 3, 4]:
        obs, *_ = env.step(action)
        images.append(obs["image"])
    assert obs["frame_mask"].tolist() == [1, 1, 1]
    assert all(np.array_equal(a, b) for a, b in zip(obs["frames"], images[-3:], strict=True))
    obs, _ = env.reset(seed=1)
    assert obs["frame_mask"].tolist() == [0, 0, 1]


def test_frame_history_stacked_channels_matches_frames() -> None:
    stacked = FrameHistory(crafter("place_stone", 50), k=2, stack_channels=True)
    plain = FrameHistory(crafter("place_stone", 50), k=2)
    a, _ = stacked.reset(seed=4)
    b, _ = plain.reset(seed=4)
    for _ in range(3):
        a, *_ = stacked.step(1)
        b, *_ = plain.step(1)
    assert a["frames"].shape == (64, 64, 6)
    assert np.array_equal(a["frames"][..., :3], b["frames"][0]) and np.array_equal(
        a["frames"][..., 3:], b["frames"][1]
    )


@pytest.mark.parametrize("asynchronous", [False, True])
def test_gymnasium_vector_envs_keep_each_instruction(asynchronous: bool) -> None:
    fns = [partial(gym.make, envs.CRAFTER_ID, task=t, step_limit=6) for t in TASKS]
    vec = make_vector_env(fns, asynchronous=asynchronous)
    obs, info = vec.reset(seed=0)
    for step in range(20):
        for i, task in enumerate(TASKS):
            assert obs["instruction"][i] == info["instruction"][i], step
            assert info["task"][i] == task
            assert obs["instruction"][i] in envs.TASKS[task].phrasings
        obs, _, _, _, info = vec.step(vec.action_space.sample())
    vec.close()


def test_shared_memory_with_text_is_refused() -> None:
    with pytest.raises(ValueError, match="garbles Text observations"):
        make_vector_env([lambda: crafter("eat_cow")], shared_memory=True)


def test_async_shared_memory_with_tokenized_instruction() -> None:
    tokenizer = ByteTokenizer()
    vec = make_vector_env([partial(make_sb3_env, envs.CRAFTER_ID, task=t, step_limit=6) for t in TASKS])
    obs, info = vec.reset(seed=0)
    for _ in range(15):
        for i in range(len(TASKS)):
            assert tokenizer.decode(obs["instruction_ids"][i]) == info["instruction"][i]
        obs, _, _, _, info = vec.step(vec.action_space.sample())
    vec.close()


@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_sb3_vec_envs_deliver_the_right_instruction(vec_cls) -> None:
    tokenizer = ByteTokenizer()
    # Module-level factories: SubprocVecEnv pickles them into its workers.
    vec = vec_cls([partial(make_sb3_env, envs.CRAFTER_ID, task=t, step_limit=6) for t in TASKS])
    vec.seed(0)
    obs = vec.reset()
    infos = list(vec.reset_infos)
    checked = 0
    for _ in range(15):
        for i, task in enumerate(TASKS):
            text = tokenizer.decode(obs["instruction_ids"][i])
            assert text in envs.TASKS[task].phrasings
            if "instruction" in infos[i]:
                assert text == infos[i]["instruction"]
                checked += 1
        obs, _, dones, infos = vec.step(np.array([vec.action_space.sample() for _ in TASKS]))
        infos = list(infos)
        for i, done in enumerate(dones):
            if done:  # SB3 auto-resets: obs is already the next episode's first observation
                infos[i] = {}
    vec.close()
    assert checked >= 30


def assert_ppo_trains(model: PPO) -> None:
    """256 steps of stock PPO: its updates ran (every parameter group moved) with finite losses."""
    model.set_logger(Logger(None, []))  # no SB3-<time> folder in the temporary directory
    before = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    losses: list[float] = []
    update = model.train

    def train_and_keep_losses() -> None:
        update()
        logged = model.logger.name_to_value
        losses.extend(
            float(logged[key]) for key in ("train/loss", "train/value_loss", "train/policy_gradient_loss")
        )

    model.train = train_and_keep_losses
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    assert len(losses) == 4 * 3 and all(np.isfinite(losses)), losses  # 4 updates x 3 losses
    after = dict(model.policy.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())
    moved = [name for name, p in after.items() if not torch.equal(p.detach(), before[name])]
    assert any(name.startswith("features_extractor") for name in moved), moved
    assert any(name.startswith("action_net") for name in moved) and any(
        name.startswith("value_net") for name in moved
    )


@pytest.mark.slow
def test_sb3_stock_ppo_trains_on_wrapped_env() -> None:
    vec = DummyVecEnv([lambda: wrap_for_sb3(crafter("collect_wood", 30))])
    model = PPO("MultiInputPolicy", vec, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    assert_ppo_trains(model)
    obs = vec.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert vec.action_space.contains(int(action[0]))


@pytest.mark.slow
def test_sb3_stock_ppo_trains_on_wrapped_babyai() -> None:
    vec = DummyVecEnv([lambda: wrap_for_sb3(gym.make(envs.babyai_id("GoToRedBall")))])
    model = PPO("MultiInputPolicy", vec, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    assert_ppo_trains(model)
