"""DAgger's rollouts: one mixture episode (the expert labels every step, the learner or the
expert acts), or one whole game in which the learner follows a plan of instructions; the worker
processes that roll a round out, and which episodes a round holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the env ids in spawned workers)
from agent import Agent
from agent.plan import Plan
from envs.data.collect import record_episode
from envs.data.store import Dataset, Episode
from envs.episodes import Step, play_episode
from envs.experts import Expert, make_expert
from envs.experts.base import ExpertCannotLabel
from envs.workers import in_worker_process, map_jobs
from train.config import DaggerConfig


@dataclass(frozen=True)
class RolloutJob:
    seed: int
    task: str | None
    round: int
    beta: float
    takeover: int | None = None  # from this env step on the expert alone acts (None: never)


def _mixture(
    agent: Agent, expert: Expert, job: RolloutJob
) -> Callable[[Any, dict[str, Any], dict[str, Any]], Any]:
    """``play_episode``'s ``execute``: the expert's label with probability ``job.beta``, else the
    learner's sampled action (its own draws, the same for the same seed and round); from step
    ``job.takeover`` on (counted from 0), always the expert's."""
    mixture = np.random.default_rng([job.seed, job.round, 7_919])
    learner = agent.acting()
    steps = 0

    def execute(label: Any, observation: dict[str, Any], info: dict[str, Any]) -> Any:
        nonlocal steps
        chosen = learner(observation, info)  # every step: the agent's history stays whole
        expert_turn = mixture.random() < job.beta  # drawn every step: the same draws either way
        if job.takeover is not None and steps >= job.takeover:
            expert_turn = True
        steps += 1
        action = label if expert_turn else chosen
        expert.executed(action)  # an expert that keeps a plan learns what really ran
        return action

    return execute


def _mixture_extra(job: RolloutJob, executed: list[Any], labels: np.ndarray) -> dict[str, Any]:
    """What a rollout episode's ``extra`` records of its mixture: round, beta, the actions that
    ran and how many of them were not the expert's label."""
    return {
        "dagger_round": job.round,
        "beta": job.beta,
        **({"takeover": job.takeover} if job.takeover is not None else {}),
        "executed_actions": np.asarray(executed).tolist(),
        "learner_steps": int(sum(int(np.any(e != lab)) for e, lab in zip(executed, labels, strict=True))),
    }


def run_dagger_episode(agent: Agent, env: gym.Env, expert: Expert, env_id: str, job: RolloutJob) -> Episode:
    """One mixture episode: the expert labels every step, the executed action is the expert's
    with probability ``job.beta`` and the learner's sampled action otherwise."""

    def start(observation: dict[str, Any], info: dict[str, Any]) -> None:
        expert.reset(env, observation, info)
        agent.reset(info["instruction"])
        agent.generator.manual_seed(job.seed)

    execute = _mixture(agent, expert, job)
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
    episode.extra = _mixture_extra(job, executed, episode.actions)
    return episode


@dataclass
class _Piece:
    """The steps of a plan-following game under one instruction: one dataset episode."""

    instruction: str
    task: str
    start: int  # the game's step at which this instruction came into effect
    images: list[np.ndarray]
    labels: list[Any] = field(default_factory=list)
    executed: list[Any] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)

    def add(self, step: Step, reward: float) -> None:
        self.images.append(step.next_observation["image"])
        self.labels.append(step.label)
        self.executed.append(step.action)
        self.rewards.append(reward)
        self.terminated.append(bool(step.terminated))
        self.truncated.append(bool(step.truncated))


def run_plan_dagger_episode(
    agent: Agent, env: gym.Env, expert: Expert, env_id: str, job: RolloutJob, plan: Plan
) -> list[Episode]:
    """One whole game in which the learner follows ``plan`` (its steps, budgets and rules, as
    ``eval --plan`` plays it) and the expert labels every step with the action for the task of
    the instruction in effect; the executed action is the expert's with probability ``job.beta``.

    The game is cut where the instruction changes: one episode per stretch of one instruction,
    each holding its instruction and task, so the tasks are labelled from the mid-game states a
    plan reaches (a second pickaxe, wood again at night) and not only from fresh worlds. A
    stretch cut by the next instruction ends truncated; the game's last one ends as the game
    did. A stretch's reward is 1 on the steps its task's achievement unlocks, and it succeeded
    if that happened. ``extra`` says where in the game each stretch began (``game_step``)."""
    pieces: list[_Piece] = []
    counts: dict[str, int] = {}

    def begin(image: np.ndarray, time: int) -> None:
        follower = agent.plan
        assert follower is not None and follower.current_task is not None
        expert.follow(follower.current_task)
        pieces.append(_Piece(follower.current, follower.current_task, time, [image]))

    def start(observation: dict[str, Any], info: dict[str, Any]) -> None:
        expert.reset(env, observation, info)
        agent.reset(plan=plan, info=info)
        agent.generator.manual_seed(job.seed)
        counts.update(info.get("achievements") or {})
        begin(observation["image"], 0)

    execute = _mixture(agent, expert, job)

    def keep(step: Step) -> None:
        piece = pieces[-1]
        now = dict(step.info.get("achievements") or {})
        unlocked = now.get(piece.task, 0) > counts.get(piece.task, 0)
        counts.clear()
        counts.update(now)
        piece.add(step, 1.0 if unlocked else 0.0)
        assert agent.plan is not None
        changes = len(agent.plan.events)
        agent.observe(step.info)
        if len(agent.plan.events) > changes and not (step.terminated or step.truncated):
            piece.truncated[-1] = True  # cut like a time limit: the next instruction takes over
            begin(step.next_observation["image"], step.index)

    stopped = None
    try:
        play_episode(env, expert.act, seed=job.seed, on_reset=start, execute=execute, on_step=keep)
    except ExpertCannotLabel as error:
        if not any(piece.labels for piece in pieces):
            raise ExpertCannotLabel(
                f"{expert.name} cannot label the first state of {env_id} seed {job.seed}: {error}"
            ) from None
        while not pieces[-1].labels:  # an instruction that came into effect but got no label
            pieces.pop()
        pieces[-1].truncated[-1] = True
        stopped = str(error)
    episodes = [
        _plan_piece_episode(piece, number, env_id, expert.name, job, plan)
        for number, piece in enumerate(pieces)
    ]
    if stopped is not None:
        episodes[-1].extra["expert_stopped"] = stopped
    return episodes


def _plan_piece_episode(
    piece: _Piece, number: int, env_id: str, expert: str, job: RolloutJob, plan: Plan
) -> Episode:
    labels = np.asarray(piece.labels, np.int64)
    return Episode(
        images=np.stack(piece.images),
        actions=labels,
        rewards=np.asarray(piece.rewards, np.float32),
        terminated=np.asarray(piece.terminated, bool),
        truncated=np.asarray(piece.truncated, bool),
        instruction=piece.instruction,
        task=piece.task,
        env_id=env_id,
        expert=expert,
        seed=job.seed,
        success=bool(any(piece.rewards)),
        extra={
            **_mixture_extra(job, piece.executed, labels),
            "plan": plan.source,
            "plan_piece": number,
            "game_step": piece.start,
        },
    )


@dataclass(frozen=True)
class _Worker:
    agent: Agent
    env: gym.Env
    expert: Expert
    env_id: str
    plan: Plan | None = None


def load_worker(
    checkpoint: str, env_id: str, expert: str | Callable[[], Expert], plan: Plan | None = None
) -> _Worker:
    import torch

    # One thread per worker process (they share the cores); never in this process, where a
    # capped pool runs the work in place and later training needs every thread.
    if in_worker_process():
        torch.set_num_threads(1)
    made = make_expert(expert) if isinstance(expert, str) else expert()
    return _Worker(Agent.from_pretrained(checkpoint), gym.make(env_id), made, env_id, plan)


def _episodes(worker: _Worker, job: RolloutJob) -> list[Episode]:
    if worker.plan is not None:
        return run_plan_dagger_episode(
            worker.agent, worker.env, worker.expert, worker.env_id, job, worker.plan
        )
    return [run_dagger_episode(worker.agent, worker.env, worker.expert, worker.env_id, job)]


def rollout_round(
    checkpoint: str,
    env_id: str,
    expert: str | Callable[[], Expert],
    jobs: list[RolloutJob],
    workers: int,
    plan: Plan | None = None,
) -> Iterator[list[Episode]]:
    """The labelled episodes of each of ``jobs``, in job order (the same whatever ``workers``
    is): one mixture episode per job, or with a ``plan`` one per instruction of its game."""
    setup_args = (checkpoint, env_id, expert, plan)
    yield from map_jobs(
        _episodes, jobs, setup=load_worker, setup_args=setup_args, workers=workers, what="dagger"
    )


def round_jobs(state: dict[str, Any], dagger: DaggerConfig, number: int) -> list[RolloutJob]:
    """Every rollout of round ``number``, in order (seeds, tasks, beta, takeover step)."""
    first = state["first_seed"] + (number - 1) * dagger.episodes
    tasks = state.get("tasks")
    beta = dagger.beta_for(number)
    return [
        RolloutJob(
            first + i,
            tasks[i % len(tasks)] if tasks else None,
            number,
            beta,
            _takeover_step(dagger.takeover, first + i, number),
        )
        for i in range(dagger.episodes)
    ]


def _takeover_step(takeover: tuple[int, int] | None, seed: int, number: int) -> int | None:
    """The step from which the expert takes over this rollout: uniform in ``takeover``, drawn
    from the rollout's seed and round (a resumed round draws the same)."""
    if takeover is None:
        return None
    first, last = takeover
    return int(np.random.default_rng([seed, number, 104_729]).integers(first, last + 1))


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
