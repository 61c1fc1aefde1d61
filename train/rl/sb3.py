"""Every place the RL code relies on stable-baselines3's private parts, named, in one module.

``SequencePPO`` replaces the two loops of SB3's PPO that touch the policy (``collect_rollouts``
and ``train``). Those loops work on state SB3 keeps in private attributes (the observation a
rollout continues from, the progress that drives the schedules, the update counter) and call
two private helpers; ``SB3Internals`` reaches them, and nothing else in train/ does. TensorBoard
output that continues across a resume builds SB3's ``TensorBoardOutputFormat`` around its own
writer, which sets that class's private ``_is_closed``.

Tested with SB3 ``SB3_TESTED``; the dependency is pinned to that minor release. A release that
renames one of these fails ``missing_internals()`` (tests/train/test_sb3_internals.py says which
and what for) instead of failing partway through a run.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import TensorBoardOutputFormat
from torch.utils.tensorboard import SummaryWriter

SB3_TESTED = "2.9.2"

# (class, private name, what the code relies on it for)
RELIED_ON: tuple[tuple[type, str, str], ...] = (
    (BaseAlgorithm, "_last_obs", "the observation the next rollout starts from"),
    (BaseAlgorithm, "_last_episode_starts", "which envs open an episode at the next rollout's start"),
    (BaseAlgorithm, "_current_progress_remaining", "1 -> 0 over learn(): the clip-range schedule's input"),
    (BaseAlgorithm, "_n_updates", "the update count: the minibatch shuffle's seed, logs and checkpoints"),
    (BaseAlgorithm, "_update_learning_rate", "applies the learning-rate schedule to the optimizer"),
    (BaseAlgorithm, "_update_info_buffer", "hands Monitor's episode returns to ep_info_buffer"),
    (TensorBoardOutputFormat, "_is_closed", "set by a TensorBoard output built around its own writer"),
)


def missing_internals() -> list[str]:
    """The names of ``RELIED_ON`` this SB3 no longer has (a method, or an attribute its class
    sets in its source), each with what the code needs it for; empty when all are there."""
    missing = []
    for owner, name, why in RELIED_ON:
        if hasattr(owner, name) or f"self.{name} =" in inspect.getsource(owner):
            continue
        missing.append(f"{owner.__name__}.{name} ({why})")
    return missing


class SB3Internals:
    """Mixed into ``SequencePPO`` (an SB3 ``PPO``): SB3's private state and helpers under names
    of our own. The rest of train/ uses these, never SB3's private names."""

    _last_obs: Any
    _last_episode_starts: Any
    _current_progress_remaining: float
    _n_updates: int

    @property
    def last_observation(self) -> Any:
        """The (vectorized) observation the next rollout starts from."""
        return self._last_obs

    @last_observation.setter
    def last_observation(self, observation: Any) -> None:
        self._last_obs = observation

    @property
    def last_episode_starts(self) -> np.ndarray:
        """bool (N,): envs whose ``last_observation`` opens an episode."""
        return self._last_episode_starts

    @last_episode_starts.setter
    def last_episode_starts(self, starts: np.ndarray) -> None:
        self._last_episode_starts = starts

    @property
    def progress_remaining(self) -> float:
        """1 at the start of ``learn`` down to 0 at its end (the schedules' input)."""
        return self._current_progress_remaining

    @property
    def updates(self) -> int:
        """Gradient epochs done so far (SB3's ``n_updates``); a resumed run restores it."""
        return self._n_updates

    @updates.setter
    def updates(self, count: int) -> None:
        self._n_updates = count

    def update_learning_rate(self, optimizer: torch.optim.Optimizer) -> None:
        self._update_learning_rate(optimizer)  # type: ignore[attr-defined]

    def record_episode_infos(self, infos: list[dict[str, Any]], dones: np.ndarray) -> None:
        """Monitor's episode statistics into ``ep_info_buffer`` (the rollout/ep_rew_mean log)."""
        self._update_info_buffer(infos, dones)  # type: ignore[attr-defined]


class ResumableTensorBoard(TensorBoardOutputFormat):
    """SB3's TensorBoard output written straight into ``folder``; ``purge_step`` drops what an
    interrupted run logged after its checkpoint, so a resumed run continues the same curves."""

    def __init__(self, folder: str, purge_step: int | None = None) -> None:
        # SB3's own constructor would open a writer without ``purge_step``: set what it sets.
        self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)
        self._is_closed = False
