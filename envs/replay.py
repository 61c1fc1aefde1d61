"""Replay stored episodes from their seed and actions, and find where they stop matching.

An episode in a native dataset records its env id, seed, task, actions and every frame. Since
the envs are deterministic given (seed, actions), stepping a fresh env through the stored
actions must give back the stored frames, rewards and flags; the first step that does not
shows where a dataset, an env version or a collection setting disagrees with the env.

Steps count actions: step 0 is the observation from ``reset``, step t the result of the t-th
action (its frame, reward, terminated and truncated).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids an episode names)
from envs.data.store import Dataset, Episode


@dataclass(frozen=True)
class ReplayResult:
    """How one stored episode replays.

    ``first_mismatch`` is None when every step matches; otherwise the first differing step
    (0 = the reset observation) and ``field`` names what differed there (instruction, frame,
    reward, terminated, truncated, length). ``skipped`` says why an episode was not replayed.
    """

    episode: int
    steps: int
    first_mismatch: int | None = None
    field: str = ""
    detail: str = ""
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.skipped and self.first_mismatch is None

    def __str__(self) -> str:
        if self.skipped:
            return f"episode {self.episode}: not replayed ({self.skipped})"
        if self.first_mismatch is None:
            return f"episode {self.episode}: {self.steps} steps replay exactly"
        return (
            f"episode {self.episode}: first mismatch at step {self.first_mismatch} of {self.steps} "
            f"({self.field}: {self.detail})"
        )


def replay_episode(
    env: gym.Env, episode: Episode, number: int = 0, options: dict[str, Any] | None = None
) -> ReplayResult:
    """Reset ``env`` with the episode's seed (and ``options``), step its stored actions and
    compare every step with what was stored."""
    steps = episode.length
    if episode.seed is None:
        return ReplayResult(number, steps, skipped="the episode records no seed")
    # Label noise and DAgger store the expert's labels as actions and what ran beside them.
    executed = episode.extra.get("executed_actions")
    if executed is None and (episode.extra.get("label_noise") or "dagger_round" in episode.extra):
        return ReplayResult(
            number,
            steps,
            skipped="the stored actions are the expert's labels and the executed ones were not recorded",
        )
    if executed is not None and len(executed) != steps:
        return ReplayResult(number, steps, 0, "executed_actions", f"{len(executed)} for {steps} steps")
    actions = episode.actions if executed is None else np.asarray(executed)

    def mismatch(step: int, field: str, detail: str) -> ReplayResult:
        return ReplayResult(number, steps, step, field, detail)

    obs, info = env.reset(seed=int(episode.seed), options=options)
    instruction = info.get("instruction", obs.get("instruction"))
    if instruction != episode.instruction:
        return mismatch(0, "instruction", f"stored {episode.instruction!r}, replayed {instruction!r}")
    if not np.array_equal(obs["image"], episode.images[0]):
        return mismatch(0, "frame", _frame_difference(episode.images[0], obs["image"]))
    for t in range(steps):
        action = actions[t]
        action = int(action) if np.ndim(action) == 0 else np.asarray(action)
        obs, reward, terminated, truncated, info = env.step(action)
        if not np.array_equal(obs["image"], episode.images[t + 1]):
            return mismatch(t + 1, "frame", _frame_difference(episode.images[t + 1], obs["image"]))
        if np.float32(reward) != episode.rewards[t]:
            return mismatch(t + 1, "reward", f"stored {episode.rewards[t]}, replayed {reward}")
        for field, value in (("terminated", terminated), ("truncated", truncated)):
            stored = bool(getattr(episode, field)[t])
            if bool(value) != stored:
                return mismatch(t + 1, field, f"stored {stored}, replayed {bool(value)}")
        if (terminated or truncated) and t + 1 < steps:
            return mismatch(t + 1, "length", f"the replay ended after {t + 1} of {steps} stored steps")
    return ReplayResult(number, steps)


def _frame_difference(stored: np.ndarray, replayed: np.ndarray) -> str:
    if stored.shape != replayed.shape:
        return f"stored shape {stored.shape}, replayed {replayed.shape}"
    differing = int(np.any(stored != replayed, axis=-1).sum())
    return f"{differing} of {stored.shape[0] * stored.shape[1]} pixels differ"


def replay_dataset(
    path: str | os.PathLike[str],
    episodes: Iterable[int] | None = None,
    *,
    env_kwargs: dict[str, Any] | None = None,
) -> list[ReplayResult]:
    """Replay episodes of the native dataset at ``path`` (all, or the numbers in ``episodes``).

    Each episode runs in ``gym.make(env_id, **env_kwargs)``, where ``env_kwargs`` defaults to
    the ones the dataset was collected with, and is reset the way collection reset it: with
    the episode's seed, and with ``options={"task": task}`` when the collection named tasks.
    Returns one ``ReplayResult`` per episode, in order.
    """
    dataset = Dataset(path)
    info = dataset.metadata.get("info") or {}
    kwargs = dict(info.get("env_kwargs") or {}) if env_kwargs is None else dict(env_kwargs)
    named_tasks = bool(info.get("tasks"))
    made: dict[str, gym.Env] = {}
    results = []
    try:
        for number in range(len(dataset)) if episodes is None else episodes:
            episode = dataset.episode(number)
            if episode.env_id not in gym.registry:
                results.append(
                    ReplayResult(
                        number, episode.length, skipped=f"env id {episode.env_id!r} is not registered"
                    )
                )
                continue
            if episode.env_id not in made:
                made[episode.env_id] = gym.make(episode.env_id, **kwargs)
            env = made[episode.env_id]
            options = {"task": episode.task} if named_tasks else None
            result = replay_episode(env, episode, number, options)
            if result.field == "instruction" and options is None and episode.task:
                # Appended by a collection that named its tasks (metadata keeps the first one's).
                retry = replay_episode(env, episode, number, {"task": episode.task})
                result = retry if retry.field != "instruction" else result
            results.append(result)
    finally:
        for env in made.values():
            env.close()
        dataset.close()
    return results


def step_digests(
    env: gym.Env, seed: int, actions: Sequence[int], options: dict[str, Any] | None = None
) -> list[str]:
    """One hex digest per step of frame bytes, reward, flags and info, for ``len(actions)``
    actions from ``reset(seed=seed)``; an ended episode resets (unseeded) and goes on.

    Two runs are the same episode exactly when their digests are equal, wherever they ran.
    """

    def digest(obs: dict[str, Any], *rest: Any) -> str:
        image = np.ascontiguousarray(obs["image"])
        text = json.dumps([obs.get("instruction"), *rest], default=repr)
        return hashlib.sha256(image.tobytes() + str(image.shape).encode() + text.encode()).hexdigest()

    obs, info = env.reset(seed=seed, options=options)
    digests = [digest(obs, info)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        digests.append(digest(obs, float(reward), bool(terminated), bool(truncated), info))
        if terminated or truncated:
            obs, info = env.reset()
            digests.append(digest(obs, info))
    return digests
