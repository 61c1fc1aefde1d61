"""PPO promises that need their own envs: resume restores the whole trainer, and episodes cut by
a time limit are bootstrapped with the value of their last observation, as SB3 does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import make_tiny_config
from safetensors.torch import load_file
from signal_env import INSTRUCTIONS, SIGNAL_ID, SignalEnv
from stable_baselines3.common.callbacks import BaseCallback

from policies import InstructionPolicy
from train.config import RLConfig, RunConfig
from train.rl import build_ppo, make_env, train_rl

FIXED_ID = "test/FixedSignal-v0"


class FixedSignalEnv(SignalEnv):
    """SignalEnv with nothing random: always the first instruction, frames that depend only on
    the step. Any two runs that act alike see the same episodes, whatever the reset seeds."""

    def _observation(self) -> dict[str, Any]:
        image = np.full((16, 16, 3), 15 * self.t, np.uint8)
        image[: self.t] = 255
        return {"image": image, "instruction": INSTRUCTIONS[self.target]}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, info = super().reset(seed=seed, options=options)
        self.target = 0
        return self._observation(), {**info, "instruction": INSTRUCTIONS[0]}


if FIXED_ID not in gym.registry:
    gym.register(id=FIXED_ID, entry_point=FixedSignalEnv, disable_env_checker=True)


def rl_run(**rl: object) -> RunConfig:
    defaults = dict(n_envs=2, vec_env="dummy", n_steps=16, batch_size=16, n_epochs=2, lr=3e-3, ent_coef=0.0)
    return RunConfig(policy=make_tiny_config(), rl=RLConfig(**{**defaults, **rl}))


@pytest.fixture
def bc_init(tmp_path: Path) -> str:
    torch.manual_seed(5)
    config = make_tiny_config().replace(action_space={"type": "Discrete", "sizes": [4]})
    return str(InstructionPolicy(config).save_pretrained(tmp_path / "bc"))


def trainer(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    checkpoint = directory / "checkpoint"
    return load_file(str(checkpoint / "model.safetensors")), torch.load(
        checkpoint / "trainer.pt", weights_only=True
    )


def test_resume_restores_weights_optimizer_and_kl_coefficient(tmp_path: Path, bc_init: str) -> None:
    """Resuming a 64-step run with a 64-step budget trains nothing more: what it saves again must
    be what it loaded (weights, Adam moments, KL coefficient, counters)."""
    run = rl_run(kl_coef=0.5, kl_decay=0.9)
    kwargs = dict(init=bc_init, env_kwargs={"length": 16})
    train_rl(run, FIXED_ID, 64, str(tmp_path / "rl"), **kwargs)
    weights, state = trainer(tmp_path / "rl")
    assert state["num_timesteps"] == 64 and state["kl_coef"] == pytest.approx(0.5 * 0.9**2)
    assert any(not torch.equal(weights[k], v) for k, v in load_file(f"{bc_init}/model.safetensors").items())
    summary = train_rl(run, FIXED_ID, 64, str(tmp_path / "rl"), resume=True, **kwargs)
    assert summary["timesteps"] == 64
    again, state_again = trainer(tmp_path / "rl")
    assert weights.keys() == again.keys()
    for key in weights:
        assert torch.equal(weights[key], again[key]), key
    assert (state_again["num_timesteps"], state_again["n_updates"], state_again["kl_coef"]) == (
        state["num_timesteps"],
        state["n_updates"],
        state["kl_coef"],
    )
    moments, moments_again = state["optimizer"]["state"], state_again["optimizer"]["state"]
    assert moments and moments.keys() == moments_again.keys()
    for index in moments:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(moments[index][name], moments_again[index][name]), (index, name)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path, bc_init: str) -> None:
    """64 steps, then resume to 96, on a deterministic env whose episodes end with each rollout:
    the same weights as 96 steps straight."""
    run = rl_run(kl_coef=0.5, kl_decay=0.9)
    kwargs = dict(init=bc_init, env_kwargs={"length": 16})
    torch.manual_seed(0)
    train_rl(run, FIXED_ID, 96, str(tmp_path / "straight"), **kwargs)
    torch.manual_seed(0)
    train_rl(run, FIXED_ID, 64, str(tmp_path / "resumed"), **kwargs)
    train_rl(run, FIXED_ID, 96, str(tmp_path / "resumed"), resume=True, **kwargs)
    straight, straight_state = trainer(tmp_path / "straight")
    resumed, resumed_state = trainer(tmp_path / "resumed")
    assert straight_state["num_timesteps"] == resumed_state["num_timesteps"] == 96
    assert straight_state["kl_coef"] == pytest.approx(resumed_state["kl_coef"])
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0, msg=key)


class Recorder(BaseCallback):
    """Keeps each step's raw rewards, dones and terminal observations (before any bootstrap)."""

    def __init__(self) -> None:
        super().__init__()
        self.rewards: list[np.ndarray] = []
        self.dones: list[np.ndarray] = []
        self.terminal: list[list[np.ndarray | None]] = []
        self.truncated: list[list[bool]] = []

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        self.rewards.append(np.array(self.locals["rewards"], copy=True))
        self.dones.append(np.array(self.locals["dones"], copy=True))
        self.terminal.append(
            [None if "terminal_observation" not in i else i["terminal_observation"]["image"] for i in infos]
        )
        self.truncated.append([bool(i.get("TimeLimit.truncated", False)) for i in infos])
        return True


def test_truncated_episodes_are_bootstrapped_with_the_value_of_their_last_observation() -> None:
    """A time limit of 3 steps cuts 10-step episodes: the reward stored at the cut is the env's
    reward + gamma * V(terminal observation, with the episode's history), as SB3's on-policy
    collection does; episodes that terminate are not bootstrapped."""
    run = rl_run(n_envs=2, n_steps=8, gamma=0.9)
    env = make_env(SIGNAL_ID, 2, "dummy", 0, 64, length=10, max_episode_steps=3)
    algo = build_ppo(run, env)
    recorder = Recorder()
    _, callback = algo._setup_learn(algo.n_steps * env.num_envs, recorder)
    assert algo.collect_rollouts(algo.env, callback, algo.rollout_buffer, algo.n_steps)
    buffer = algo.rollout_buffer
    model = algo.model.eval()
    images = buffer.observations["image"]
    cuts = 0
    for e in range(env.num_envs):
        start = 0
        for t in range(algo.n_steps):
            if not recorder.dones[t][e]:
                expected = recorder.rewards[t][e]
            else:
                assert recorder.truncated[t][e] and recorder.terminal[t][e] is not None
                frames = [algo.policy.frames(images[k, e][None])[0] for k in range(start, t + 1)]
                frames.append(algo.policy.frames(recorder.terminal[t][e][None])[0])
                ids = buffer.observations["instruction_ids"][start, e][None]
                text = algo.policy.instructions(ids, buffer.observations["instruction_mask"][start, e][None])
                with torch.no_grad():
                    value = model(torch.stack(frames)[None], text).value[0, -1]
                expected = recorder.rewards[t][e] + 0.9 * float(value)
                start, cuts = t + 1, cuts + 1
            assert buffer.rewards[t, e] == pytest.approx(expected, abs=1e-5), (t, e)
    assert cuts == 4  # steps 2 and 5 of both envs
    env.close()
