"""Run experts in worker processes and write their episodes to a dataset."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids in spawned workers)
from envs.data.store import Dataset, DatasetWriter, Episode
from envs.episodes import Act, Step, play_episode
from envs.experts import Expert, make_expert
from envs.experts.base import ExpertCannotLabel
from envs.workers import make_env, map_jobs


@dataclass(frozen=True)
class Job:
    seed: int
    task: str | None


def record_episode(
    env: gym.Env,
    act: Act,
    *,
    seed: int,
    task: str | None,
    env_id: str,
    expert: str,
    on_reset: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    execute: Callable[[Any, dict[str, Any], dict[str, Any]], Any] | None = None,
) -> tuple[Episode, list[Any]]:
    """One episode of ``play_episode`` kept as a dataset ``Episode``: every observation's image
    (the final one included), ``act``'s actions as the labels, rewards and flags. Also returns
    the actions that ran (they differ from the labels where ``execute`` replaced them).

    When ``act`` raises ``ExpertCannotLabel`` the episode ends at the last labelled step: that
    step is marked truncated and ``extra["expert_stopped"]`` says why. An expert that cannot
    label even the first state has nothing to record, and the error propagates."""
    images: list[np.ndarray] = []
    labels: list[Any] = []
    executed: list[Any] = []
    rewards: list[float] = []
    terminated: list[bool] = []
    truncated: list[bool] = []
    last: dict[str, Any] = {}  # the latest info and whether any step succeeded

    def start(observation: dict[str, Any], info: dict[str, Any]) -> None:
        images.append(observation["image"])
        last.update(info=info, success=False)
        if on_reset is not None:
            on_reset(observation, info)

    def keep(step: Step) -> None:
        images.append(step.next_observation["image"])
        labels.append(step.label)
        executed.append(step.action)
        rewards.append(step.reward)
        terminated.append(step.terminated)
        truncated.append(step.truncated)
        last.update(info=step.info, success=step.success)

    extra: dict[str, Any] = {}
    try:
        play_episode(env, act, seed=seed, task=task, on_reset=start, execute=execute, on_step=keep)
    except ExpertCannotLabel as error:
        if not labels:
            raise ExpertCannotLabel(
                f"{expert} cannot label the first state of {env_id} seed {seed}: {error}"
            ) from None
        # Cut short like a time limit: the recorded steps keep their labels, nothing follows.
        truncated[-1] = True
        extra["expert_stopped"] = str(error)
    episode = Episode(
        images=np.stack(images),
        actions=np.asarray(labels, np.int64),
        rewards=np.asarray(rewards, np.float32),
        terminated=np.asarray(terminated, bool),
        truncated=np.asarray(truncated, bool),
        instruction=last["info"]["instruction"],
        task=last["info"]["task"],
        env_id=env_id,
        expert=expert,
        seed=seed,
        success=last["success"],
        extra=extra,
    )
    return episode, executed


def run_episode(
    env: gym.Env, expert: Expert, seed: int, task: str | None, env_id: str, noise: float = 0.0
) -> Episode:
    """Roll one expert episode; the episode records every observation and the final one.

    ``noise`` > 0 (DART, Laskey et al. 2017): with that probability the env executes a random
    action instead of the expert's, while the recorded action stays the expert's label. The
    demonstrations then show how to recover from mistakes a cloned policy will make.
    """
    rng = np.random.default_rng([seed, 104_729])

    def execute(label: Any, observation: dict[str, Any], info: dict[str, Any]) -> Any:
        action = label
        if noise > 0 and rng.random() < noise:
            action = int(rng.integers(env.action_space.n))
        expert.executed(action)
        return action

    episode, executed = record_episode(
        env,
        expert.act,
        seed=seed,
        task=task,
        env_id=env_id,
        expert=expert.name,
        on_reset=lambda observation, info: expert.reset(env, observation, info),
        execute=execute,
    )
    if noise > 0:
        # The labels differ from what ran; what ran is kept so the episode can be replayed.
        episode.extra.update(label_noise=noise, executed_actions=[int(action) for action in executed])
    return episode


@dataclass(frozen=True)
class _Worker:
    env: gym.Env
    expert: Expert
    env_id: str
    noise: float


def _set_up_worker(env_id: str, env_kwargs: dict[str, Any], expert: str, seed: int, noise: float) -> _Worker:
    return _Worker(gym.make(env_id, **env_kwargs), make_expert(expert, seed=seed), env_id, noise)


def _episode(worker: _Worker, job: Job) -> Episode:
    return run_episode(worker.env, worker.expert, job.seed, job.task, worker.env_id, worker.noise)


def make_jobs(episodes: int, seed: int, tasks: list[str] | None) -> list[Job]:
    """Episode i uses seed ``seed + i`` and cycles through ``tasks`` (None: the env samples)."""
    return [Job(seed + i, tasks[i % len(tasks)] if tasks else None) for i in range(episodes)]


def iter_episodes(
    env_id: str,
    expert: str,
    jobs: list[Job],
    workers: int = 1,
    env_kwargs: dict[str, Any] | None = None,
    expert_seed: int = 0,
    noise: float = 0.0,
) -> Iterator[Episode]:
    """Episodes in job order (deterministic whatever ``workers`` is)."""
    setup_args = (env_id, env_kwargs or {}, expert, expert_seed, noise)
    yield from map_jobs(
        _episode, jobs, setup=_set_up_worker, setup_args=setup_args, workers=workers, what="collect"
    )


def recorded_seeds(out: str | Path) -> list[int]:
    """The seeds of the episodes already in the dataset at ``out`` (none when it is new)."""
    root = Path(out)
    if not (root / "metadata.json").exists():
        return []
    return sorted({e["seed"] for e in Dataset(root).episodes if isinstance(e.get("seed"), int)})


def next_seed(out: str | Path) -> int:
    """The first seed an append to ``out`` uses by default: one after the highest recorded seed,
    so that a second collect adds new episodes instead of repeating the first run's."""
    seeds = recorded_seeds(out)
    return seeds[-1] + 1 if seeds else 0


def collect(
    out: str,
    env_id: str,
    expert: str,
    episodes: int,
    *,
    tasks: list[str] | None = None,
    workers: int = 1,
    seed: int | None = None,
    only_success: bool = False,
    noise: float = 0.0,
    env_kwargs: dict[str, Any] | None = None,
    progress: Callable[[Episode, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Collect ``episodes`` expert episodes into the dataset at ``out``; returns statistics.

    Episode i uses seed ``seed + i``; ``seed`` None starts after the highest seed already
    recorded in ``out`` (0 for a new dataset). The statistics name the seeds used.
    """
    env_kwargs = dict(env_kwargs or {})
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    # Built with the task list so that unknown ids and task names fail before anything is written.
    probe = make_env(env_id, tasks, **env_kwargs)
    image_shape = probe.observation_space["image"].shape
    action_space = probe.action_space
    probe.close()
    if seed is None:
        seed = next_seed(out)
    jobs = make_jobs(episodes, seed, tasks)
    # steps: every step run; kept_steps: the steps of the episodes written.
    stats = {"episodes": 0, "kept": 0, "successes": 0, "steps": 0, "kept_steps": 0}
    start = time.perf_counter()
    info = {"expert": expert, "tasks": tasks, "seed": seed, "noise": noise, "env_kwargs": env_kwargs}
    with DatasetWriter(
        out, env_id=env_id, image_shape=image_shape, action_space=action_space, info=info
    ) as writer:
        for episode in iter_episodes(env_id, expert, jobs, workers, env_kwargs, seed, noise):
            stats["episodes"] += 1
            stats["successes"] += int(episode.success)
            stats["steps"] += episode.length
            if episode.success or not only_success:
                writer.add(episode)
                stats["kept"] += 1
                stats["kept_steps"] += episode.length
            if progress is not None:
                progress(episode, {"success_rate": stats["successes"] / stats["episodes"]})
    elapsed = time.perf_counter() - start
    return {
        **stats,
        "success_rate": stats["successes"] / max(stats["episodes"], 1),
        "seconds": elapsed,
        "episodes_per_s": stats["episodes"] / elapsed if elapsed > 0 else float("inf"),
        "out": out,
        "seeds": [seed, seed + episodes - 1],
    }
