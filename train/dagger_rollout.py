"""DAgger's rollouts: one mixture episode (the expert labels every step, the learner or the
expert acts), the worker processes that roll a round out, and which episodes a round holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the env ids in spawned workers)
from agent import Agent
from envs.data.collect import record_episode
from envs.data.store import Dataset, Episode
from envs.experts import Expert, make_expert
from envs.workers import in_worker_process, map_jobs
from train.config import DaggerConfig


@dataclass(frozen=True)
class RolloutJob:
    seed: int
    task: str | None
    round: int
    beta: float


def run_dagger_episode(agent: Agent, env: gym.Env, expert: Expert, env_id: str, job: RolloutJob) -> Episode:
    """One mixture episode: the expert labels every step, the executed action is the expert's
    with probability ``job.beta`` and the learner's sampled action otherwise."""
    mixture = np.random.default_rng([job.seed, job.round, 7_919])
    learner = agent.acting()

    def start(observation: dict[str, Any], info: dict[str, Any]) -> None:
        expert.reset(env, observation, info)
        agent.reset(info["instruction"])
        agent.generator.manual_seed(job.seed)

    def execute(label: Any, observation: dict[str, Any], info: dict[str, Any]) -> Any:
        chosen = learner(observation, info)  # every step: the agent's history stays whole
        action = label if mixture.random() < job.beta else chosen
        expert.executed(action)  # an expert that keeps a plan learns what really ran
        return action

    episode, executed = record_episode(
        env,
        expert.act,
        seed=job.seed,
        task=job.task,
        env_id=env_id,
        expert=expert.name,
        on_reset=start,
        execute=execute,
    )
    labels = episode.actions
    episode.extra = {
        "dagger_round": job.round,
        "beta": job.beta,
        "executed_actions": np.asarray(executed).tolist(),
        "learner_steps": int(sum(int(np.any(e != lab)) for e, lab in zip(executed, labels, strict=True))),
    }
    return episode


@dataclass(frozen=True)
class _Worker:
    agent: Agent
    env: gym.Env
    expert: Expert
    env_id: str


def load_worker(checkpoint: str, env_id: str, expert: str | Callable[[], Expert]) -> _Worker:
    import torch

    # One thread per worker process (they share the cores); never in this process, where a
    # capped pool runs the work in place and later training needs every thread.
    if in_worker_process():
        torch.set_num_threads(1)
    made = make_expert(expert) if isinstance(expert, str) else expert()
    return _Worker(Agent.from_pretrained(checkpoint), gym.make(env_id), made, env_id)


def _episode(worker: _Worker, job: RolloutJob) -> Episode:
    return run_dagger_episode(worker.agent, worker.env, worker.expert, worker.env_id, job)


def rollout_round(
    checkpoint: str,
    env_id: str,
    expert: str | Callable[[], Expert],
    jobs: list[RolloutJob],
    workers: int,
) -> Iterator[Episode]:
    """Labelled mixture episodes for ``jobs``, in job order (the same whatever ``workers`` is)."""
    setup_args = (checkpoint, env_id, expert)
    yield from map_jobs(
        _episode, jobs, setup=load_worker, setup_args=setup_args, workers=workers, what="dagger"
    )


def round_jobs(state: dict[str, Any], dagger: DaggerConfig, number: int) -> list[RolloutJob]:
    """Every rollout of round ``number``, in order (seeds, tasks, beta)."""
    first = state["first_seed"] + (number - 1) * dagger.episodes
    tasks = state.get("tasks")
    beta = dagger.beta_for(number)
    return [
        RolloutJob(first + i, tasks[i % len(tasks)] if tasks else None, number, beta)
        for i in range(dagger.episodes)
    ]


def round_entries(aggregate: Path, jobs: list[RolloutJob], number: int) -> list[dict[str, Any]]:
    """The index entries of round ``number``'s rollouts already in the aggregate (a resumed round
    finds those written before the interruption)."""
    seeds = {job.seed for job in jobs}
    return [
        entry
        for entry in Dataset(aggregate).episodes
        if entry.get("extra", {}).get("dagger_round") == number and entry.get("seed") in seeds
    ]


def round_statistics(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Rollout success and the fraction of steps the learner chose, over all of a round's
    episodes (those of an interrupted run included)."""
    steps = sum(entry["length"] for entry in entries)
    learner = sum(entry["extra"].get("learner_steps", 0) for entry in entries)
    return {
        "rollout_success": sum(bool(entry.get("success")) for entry in entries) / max(1, len(entries)),
        "learner_step_fraction": learner / max(1, steps),
    }
