"""PPO (stable-baselines3) on the instruction-conditioned policy, from scratch or from BC.

The policy reads a growing frame history, so SB3's sample-by-sample PPO does not fit it as is.
``SequencePPO`` keeps SB3's machinery (vector envs, Monitor, rollout buffer and GAE, logger,
callbacks, schedules) and replaces the two loops that touch the policy: rollouts step the policy
incrementally with a K/V cache per env, and the update trains on whole episode segments with the
parallel causal ``forward``. Options: ``init`` (a BC checkpoint: at step 0 the RL policy is
exactly the BC policy), a KL penalty toward that policy with a decaying coefficient, and an
auxiliary BC loss on demonstrations. Checkpoints use the project's format (config.json +
model.safetensors).

Modules, in the order data flows through them (SB3 splits its code the same way):

- ``policy``: ``SB3PolicyAdapter``, SB3's ``BasePolicy`` interface around an ``InstructionPolicy``.
- ``buffer``: the rollout buffer, episode segments, minibatch packing and padding, the KL term.
- ``rollout``: the rollout loop (``SequenceRollouts``, mixed into ``SequencePPO``).
- ``ppo``: ``SequencePPO`` and its update (the PPO loss).
- ``run``: env building, checkpoints, TensorBoard across resumes and ``train_rl``.
"""

from train.rl.buffer import Segment, SequenceRolloutBuffer, kl_divergence, pack_minibatches, split_segments
from train.rl.policy import SB3PolicyAdapter
from train.rl.ppo import SequencePPO
from train.rl.run import build_ppo, check_init_matches_env, make_env, train_rl

__all__ = [
    "SB3PolicyAdapter",
    "Segment",
    "SequencePPO",
    "SequenceRolloutBuffer",
    "build_ppo",
    "check_init_matches_env",
    "kl_divergence",
    "make_env",
    "pack_minibatches",
    "split_segments",
    "train_rl",
]
