"""Stock SB3 PPO on a BabyAI level: the instruction as raw byte ids vs as a sentence vector.

Two arms, one change: ``wrap_for_sb3(env, instruction="ids")`` (byte token ids + mask, which
``MultiInputPolicy`` flattens as plain numbers) against ``instruction="embedding"`` (the frozen
all-MiniLM-L6-v2 vector, float32 (384,)). Same level, seeds, steps and hyperparameters. Each
trained model is evaluated on the same held-out level seeds, sampling its actions (greedy
policies this young loop in place and score 0 on both arms); and once more with every
episode's instruction replaced by another level's ("swapped"), so a policy that uses the
instruction drops there.

The arms run one after another in this process, single-threaded (torch and OpenMP):

    OMP_NUM_THREADS=1 python tools/sb3_instruction_embedding.py --steps 55000 --out sb3_embedding.json

CPU seconds are this process's (``time.process_time``), per arm: training (the embedding arm's
includes loading the encoder) and evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

import envs
from agent.evaluate import wilson_interval
from envs.wrappers import MiniLMSentenceEncoder, wrap_for_sb3


@dataclass(frozen=True)
class Settings:
    level: str = "GoToLocal"
    steps: int = 55_000
    seed: int = 0
    n_envs: int = 8
    frames: int = 1
    n_steps: int = 128
    batch_size: int = 256
    n_epochs: int = 4
    learning_rate: float = 2.5e-4
    ent_coef: float = 0.01
    gamma: float = 0.99
    eval_episodes: int = 200
    eval_seed_start: int = 1_000_000  # far from any training level seed's neighbourhood


class SwapInstruction(gym.Wrapper):
    """Hands the agent another level's instruction: the mission of level seed ``seed + offset``
    (re-drawn until it differs), so the world and the instruction disagree."""

    def __init__(self, env: gym.Env, level_id: str, offset: int = 7_919) -> None:
        super().__init__(env)
        self.donor = gym.make(level_id)
        self.offset = offset
        self.text = ""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        observation, info = self.env.reset(seed=seed, options=options)
        donor_seed = (seed or 0) + self.offset
        while True:
            _, donor_info = self.donor.reset(seed=donor_seed)
            if donor_info["instruction"] != info["instruction"]:
                break
            donor_seed += 1
        self.text = donor_info["instruction"]
        return {**observation, "instruction": self.text}, info

    def step(self, action: Any) -> Any:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return {**observation, "instruction": self.text}, reward, terminated, truncated, info


def make_env(settings: Settings, mode: str, encoder: Any = None, swap: bool = False) -> gym.Env:
    level_id = envs.babyai_id(settings.level)
    env = gym.make(level_id)
    if swap:
        env = SwapInstruction(env, level_id)
    return wrap_for_sb3(env, k=settings.frames, instruction=mode, encoder=encoder)


def evaluate(model: PPO, env: gym.Env, settings: Settings, deterministic: bool) -> dict[str, Any]:
    successes = 0
    for episode in range(settings.eval_episodes):
        observation, _ = env.reset(seed=settings.eval_seed_start + episode)
        done, success = False, False
        while not done:
            action, _ = model.predict(observation, deterministic=deterministic)
            observation, _, terminated, truncated, info = env.step(int(action))
            success = success or bool(info["success"])
            done = terminated or truncated
        successes += success
    low, high = wilson_interval(successes, settings.eval_episodes)
    return {
        "successes": successes,
        "episodes": settings.eval_episodes,
        "success": successes / settings.eval_episodes,
        "wilson95": [round(low, 4), round(high, 4)],
    }


def run_arm(settings: Settings, mode: str) -> dict[str, Any]:
    start = time.process_time()
    wall = time.perf_counter()
    # One encoder for every env of the arm: loaded once, its cache shared.
    encoder = MiniLMSentenceEncoder() if mode == "embedding" else None
    vec = DummyVecEnv([lambda: make_env(settings, mode, encoder) for _ in range(settings.n_envs)])
    model = PPO(
        "MultiInputPolicy",
        vec,
        n_steps=settings.n_steps,
        batch_size=settings.batch_size,
        n_epochs=settings.n_epochs,
        learning_rate=settings.learning_rate,
        ent_coef=settings.ent_coef,
        gamma=settings.gamma,
        seed=settings.seed,
        device="cpu",
        verbose=0,
    )
    model.learn(total_timesteps=settings.steps)
    train_cpu = time.process_time() - start
    train_wall = time.perf_counter() - wall
    eval_start = time.process_time()
    results = {
        "sampled": evaluate(model, make_env(settings, mode, encoder), settings, deterministic=False),
        "sampled_swapped": evaluate(
            model, make_env(settings, mode, encoder, swap=True), settings, deterministic=False
        ),
    }
    return {
        "mode": mode,
        "timesteps": int(model.num_timesteps),
        "train_cpu_s": round(train_cpu, 1),
        "train_wall_s": round(train_wall, 1),
        "eval_cpu_s": round(time.process_time() - eval_start, 1),
        **results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for field, default in asdict(Settings()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--arms", nargs="+", default=["ids", "embedding"], choices=["ids", "embedding"])
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    args = vars(parser.parse_args())
    arms, out = args.pop("arms"), args.pop("out")
    settings = Settings(**args)
    torch.set_num_threads(1)
    report: dict[str, Any] = {"settings": asdict(settings), "arms": {}}
    for mode in arms:
        report["arms"][mode] = row = run_arm(settings, mode)
        print(
            f"{mode:9s} steps {row['timesteps']}  train {row['train_cpu_s'] / 60:.1f} CPU-min  "
            + "  ".join(
                f"{name} {row[name]['successes']}/{row[name]['episodes']} {row[name]['wilson95']}"
                for name in ("sampled", "sampled_swapped")
            ),
            flush=True,
        )
        if out:
            with open(out, "w") as file:
                json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()
