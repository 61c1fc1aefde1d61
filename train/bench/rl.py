"""``bench rl``: PPO with the fusion policy against SB3's stock CnnPolicy PPO on the same env and
budget, the fusion run's wall-time split, and the frame encoder's cost against NatureCNN."""

from __future__ import annotations

from typing import Any

import envs
from train.bench.timing import interleaved, median_seconds, timed


def _image_only_env(env_id: str, **env_kwargs: Any) -> Any:
    """The env with its image as the whole observation: what SB3's stock CnnPolicy reads."""
    import gymnasium as gym

    env = gym.make(env_id, **env_kwargs)
    return gym.wrappers.TransformObservation(
        env, lambda observation: observation["image"], env.observation_space["image"]
    )


def _encoder_cost_ratio(fusion: Any, cnn: Any, frames: int = 128) -> float:
    """Forward + backward time per frame: our frame encoder over SB3's NatureCNN extractor."""
    import torch

    device = next(cnn.policy.parameters()).device
    images = torch.randint(0, 256, (frames, 64, 64, 3), dtype=torch.uint8, device=device)
    channels_first = images.permute(0, 3, 1, 2).float()
    ours = fusion.model.frame_encoder
    theirs = cnn.policy.features_extractor

    def ours_step() -> None:
        ours(images).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def theirs_step() -> None:
        theirs(channels_first / 255.0).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return median_seconds(ours_step, 3) / median_seconds(theirs_step, 3)


def bench_rl(quick: bool = False) -> dict[str, Any]:
    """PPO steps/s with the fusion policy (default model, sequence PPO) over SB3's stock
    CnnPolicy PPO on the same env, n_envs, n_steps, batch size and epochs; rollouts of the two
    alternate so machine noise hits both alike. Also the fusion run's wall-time split."""
    from functools import partial

    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    from policies import PolicyConfig
    from train.config import RLConfig, RunConfig
    from train.rl import build_ppo, make_env
    from train.rl.run import silent_logger

    n_envs, n_steps, rounds = (4, 32, 1) if quick else (8, 64, 3)
    rl = RLConfig(n_envs=n_envs, vec_env="dummy", n_steps=n_steps, batch_size=128, n_epochs=4, seed=0)
    torch.manual_seed(0)
    fusion = build_ppo(
        RunConfig(policy=PolicyConfig(), rl=rl), make_env(envs.CRAFTER_ID, n_envs, "dummy", 0, 128)
    )
    cnn_env = make_vec_env(
        partial(_image_only_env, envs.CRAFTER_ID), n_envs=n_envs, seed=0, vec_env_cls=DummyVecEnv
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"  # both on the same device
    cnn = PPO("CnnPolicy", cnn_env, n_steps=n_steps, batch_size=128, n_epochs=4, seed=0, device=device)
    cnn.set_logger(silent_logger())  # as build_ppo's: no SB3-<time> folder per learn()
    per_rollout = n_envs * n_steps
    for algo in (fusion, cnn):  # warm-up: text encoder cache, allocator, env processes
        algo.learn(per_rollout)
    fusion.timings.clear()
    seconds = interleaved(
        {
            name: timed(partial(algo.learn, per_rollout, reset_num_timesteps=False))
            for name, algo in (("fusion", fusion), ("cnn", cnn))
        },
        rounds,
    )
    fusion.env.close()
    cnn_env.close()
    steps = rounds * per_rollout
    encoder_ratio = _encoder_cost_ratio(fusion, cnn)
    split = dict(fusion.timings)
    total = sum(split.values())
    return {
        "fusion_ppo_sps": steps / seconds["fusion"],
        "cnn_ppo_sps": steps / seconds["cnn"],
        "fusion_ppo_over_cnn_ppo_sps": seconds["cnn"] / seconds["fusion"],
        "fusion_env_fraction": split.get("env", 0.0) / total,
        "fusion_inference_fraction": split.get("inference", 0.0) / total,
        "fusion_update_fraction": split.get("update", 0.0) / total,
        "frame_encoder_over_naturecnn_train_time": encoder_ratio,
        "device": device,
        "setup": f"Crafter-Instruct, {n_envs} envs (DummyVecEnv) x {n_steps} steps, batch 128, 4 epochs, "
        f"{rounds} rollouts each; default model vs SB3 CnnPolicy (NatureCNN) on the image",
        "goals": {"fusion_ppo_over_cnn_ppo_sps": ">= 0.5"},
    }
