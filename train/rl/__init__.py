"""PPO (stable-baselines3) on the instruction-conditioned policy: see train/rl/ppo.py."""

from train.rl.ppo import (
    FusionPolicy,
    SequencePPO,
    SequenceRolloutBuffer,
    build_ppo,
    check_init_matches_env,
    kl_divergence,
    make_env,
    pack_minibatches,
    save_rl_checkpoint,
    split_segments,
    train_rl,
)

__all__ = [
    "FusionPolicy",
    "SequencePPO",
    "SequenceRolloutBuffer",
    "build_ppo",
    "check_init_matches_env",
    "kl_divergence",
    "make_env",
    "pack_minibatches",
    "save_rl_checkpoint",
    "split_segments",
    "train_rl",
]
