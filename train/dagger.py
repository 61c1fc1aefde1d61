"""DAgger (Ross, Gordon and Bagnell, 2011): the expert labels the states the learner visits.

Behavioral cloning trains only on states the expert visits; a cloned policy's small mistakes
lead it to states nobody labelled, where it errs more (compounding error). DAgger closes that
loop. Round 0 is behavioral cloning on the demonstrations (or a given checkpoint). Round r >= 1:

1. roll out episodes in which each step executes the expert's action with probability
   ``beta_r = beta * beta_decay ** (r - 1)`` and the current policy's sampled action otherwise;
2. the expert labels every visited state: the label is the episode's recorded action, the
   executed actions go to the episode's ``extra`` (the store keeps labels and execution apart);
3. append those episodes to the aggregated dataset (a copy of the demonstrations in OUT/data);
4. fine-tune the policy from the previous round's weights on the whole aggregate.

Each round's rollouts are deterministic given their seeds (episode i of round r uses seed
``first_seed + (r - 1) * episodes + i``, its own action-sampling seed and mixture draws), so a
resumed run writes exactly the episodes an interrupted round had not written yet.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the env ids in spawned workers)
from agent import Agent
from agent.evaluate import evaluate
from envs.data.collect import next_seed, record_episode
from envs.data.store import Dataset, DatasetWriter, Episode
from envs.experts import Expert, make_expert
from envs.spaces import action_space_spec
from envs.workers import check_env_id, make_env, map_jobs
from policies import InstructionPolicy
from policies.persist import atomic_directory
from train.bc import train_bc_policy
from train.common import CHECKPOINT
from train.config import ConfigError, RunConfig

STATE = "dagger.json"


@dataclass(frozen=True)
class DaggerConfig:
    """DAgger settings (each is a flag of ``instructcraft dagger``)."""

    rounds: int = 3
    """rounds of rollouts + relabelling + fine-tuning after the round-0 policy"""
    episodes: int = 200
    """learner episodes rolled out (and labelled) per round"""
    beta: float = 0.5
    """probability of executing the expert's action in round 1"""
    beta_decay: float = 0.5
    """beta is multiplied by this every round (0 = pure learner rollouts after round 1)"""
    steps: int = 400
    """BC fine-tuning steps per round on the aggregated dataset"""
    eval_episodes: int = 40
    """learner-only evaluation episodes after each round (0 = off)"""
    eval_seed: int = 100_000
    workers: int = 2

    def __post_init__(self) -> None:
        for name in ("rounds", "episodes", "steps", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dagger.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_episodes < 0:
            raise ConfigError(f"dagger.eval_episodes must be >= 0, got {self.eval_episodes}")
        if not 0.0 <= self.beta <= 1.0 or not 0.0 <= self.beta_decay <= 1.0:
            raise ConfigError(
                f"dagger.beta and dagger.beta_decay must be in [0, 1], got {self.beta} and {self.beta_decay}"
            )

    def beta_for(self, round_: int) -> float:
        return self.beta * self.beta_decay ** (round_ - 1)


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


def _load_worker(checkpoint: str, env_id: str, expert: str | Callable[[], Expert]) -> _Worker:
    import torch

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
        _episode, jobs, setup=_load_worker, setup_args=setup_args, workers=workers, what="dagger"
    )


def _load_state(out: Path) -> dict[str, Any]:
    path = out / STATE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is corrupt ({error}): start a new run in another --out") from None


def _save_state(out: Path, state: dict[str, Any]) -> None:
    temporary = out / f".{STATE}.tmp"
    temporary.write_text(json.dumps(state, indent=2, default=str))
    temporary.replace(out / STATE)


def _copy_checkpoint(source: Path, target: Path) -> None:
    with atomic_directory(target) as staging:
        for path in source.iterdir():
            if path.is_file():
                shutil.copy2(path, staging / path.name)


def _check_inputs(
    data: str,
    env_id: str,
    expert: str | Callable[[], Expert],
    tasks: list[str] | None,
    init: str | None,
) -> None:
    """Everything that can fail is checked here, before any training or rollout."""
    check_env_id(env_id)
    if isinstance(expert, str):
        make_expert(expert)
    probe = make_env(env_id, tasks)
    env_spec = action_space_spec(probe.action_space)
    env_shape = list(probe.observation_space["image"].shape)
    probe.close()
    metadata = Dataset(data).metadata
    if metadata["action_space"] != env_spec or metadata["image_shape"] != env_shape:
        raise ConfigError(
            f"{data} holds {metadata['action_space']} actions and {metadata['image_shape']} images but "
            f"{env_id} has {env_spec} and {env_shape}: use demonstrations collected on {env_id}"
        )
    if init is not None:
        InstructionPolicy.from_pretrained(init).check_action_space(env_spec)


def run_dagger(
    run: RunConfig,
    dagger: DaggerConfig,
    data: str,
    out: str,
    env_id: str,
    expert: str | Callable[[], Expert],
    *,
    tasks: list[str] | None = None,
    init: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run DAgger; returns the per-round summary (also written to OUT/dagger.json).

    ``expert`` is a registered expert name (``make_expert``) or a picklable factory.
    ``init`` starts from a trained checkpoint instead of training round 0 on ``data``.
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    root = Path(out)
    state = _load_state(root) if resume else {}
    if resume and not state:
        raise ConfigError(f"{root / STATE} is missing: nothing to resume in {root}; start without --resume")
    if not resume and (root / STATE).exists():
        raise ConfigError(
            f"{root} already holds a DAgger run: pass --resume to continue it, or another --out"
        )
    _check_inputs(data, env_id, expert, tasks, init)
    aggregate = root / "data"
    if not state:
        root.mkdir(parents=True, exist_ok=True)
        if aggregate.exists():
            shutil.rmtree(aggregate)  # a copy left by a run that stopped before its first state
        shutil.copytree(data, aggregate, ignore=shutil.ignore_patterns(".lock"))
        state = {
            "data": str(data),
            "env_id": env_id,
            "tasks": tasks,
            "first_seed": next_seed(aggregate),
            "dagger": dataclasses.asdict(dagger),
            "rounds": [],
        }
        _save_state(root, state)
    elif state.get("dagger") != dataclasses.asdict(dagger) or state.get("env_id") != env_id:
        raise ConfigError(
            f"{root} was started with {state.get('env_id')} and {state.get('dagger')}; resume with the "
            "same settings, or start a new run in another --out"
        )
    writer = SummaryWriter(str(root / "tb"))
    done = {entry["round"] for entry in state["rounds"]}

    def finish_round(number: int, checkpoint: Path, extra: dict[str, Any]) -> None:
        result: dict[str, Any] = {"round": number, "checkpoint": str(checkpoint), **extra}
        summary = Dataset(aggregate).summary()
        result["dataset_episodes"], result["dataset_steps"] = summary["episodes"], summary["steps"]
        if dagger.eval_episodes:
            evaluation = evaluate(
                env_id,
                dagger.eval_episodes,
                checkpoint=str(checkpoint),
                tasks=tasks,
                workers=dagger.workers,
                seed=dagger.eval_seed,
            )
            result["success"] = evaluation["mean_task_success"]
            result["eval"] = {task: row["success_rate"] for task, row in evaluation["tasks"].items()}
            writer.add_scalar("dagger/success", result["success"], number)
        writer.add_scalar("dagger/dataset_episodes", result["dataset_episodes"], number)
        writer.add_scalar("dagger/dataset_steps", result["dataset_steps"], number)
        for key in ("beta", "rollout_success", "learner_step_fraction"):
            if key in result:
                writer.add_scalar(f"dagger/{key}", result[key], number)
        writer.flush()
        state["rounds"].append(result)
        _save_state(root, state)
        if progress:
            shown = f"success {result['success']:.2f}, " if "success" in result else ""
            print(
                f"round {number}: {shown}dataset {result['dataset_episodes']} episodes / {result['dataset_steps']} steps"
            )

    round_dir = root / "round_00"
    if 0 not in done:
        if init is not None:
            _copy_checkpoint(Path(init), round_dir / CHECKPOINT)
        else:
            train_bc_policy(run, str(aggregate), str(round_dir), progress=progress)
        finish_round(0, round_dir / CHECKPOINT, {"trained_from": init or "demonstrations"})
    previous = round_dir / CHECKPOINT
    for number in range(1, dagger.rounds + 1):
        round_dir = root / f"round_{number:02d}"
        if number in done:
            previous = round_dir / CHECKPOINT
            continue
        beta = dagger.beta_for(number)
        first = state["first_seed"] + (number - 1) * dagger.episodes
        written = {
            e["seed"] for e in Dataset(aggregate).episodes if e.get("extra", {}).get("dagger_round") == number
        }
        jobs = [
            RolloutJob(first + i, tasks[i % len(tasks)] if tasks else None, number, beta)
            for i in range(dagger.episodes)
            if first + i not in written
        ]
        bar = tqdm(total=dagger.episodes, initial=len(written), unit="ep", desc=f"dagger round {number}")
        bar.disable = not progress
        successes = learner_steps = steps = 0
        metadata = Dataset(aggregate).metadata
        with DatasetWriter(
            aggregate,
            env_id=metadata["env_id"],
            image_shape=tuple(metadata["image_shape"]),
            action_space=metadata["action_space"],
        ) as out_data:
            for episode in rollout_round(str(previous), env_id, expert, jobs, dagger.workers):
                out_data.add(episode)
                successes += int(episode.success)
                learner_steps += episode.extra["learner_steps"]
                steps += episode.length
                bar.update(1)
                bar.set_postfix(success=f"{successes / max(1, bar.n - len(written)):.2f}", beta=f"{beta:.2f}")
        bar.close()
        fine_tune = RunConfig(run.policy, dataclasses.replace(run.train, steps=dagger.steps), run.rl)
        train_bc_policy(fine_tune, str(aggregate), str(round_dir), progress=progress, init=str(previous))
        previous = round_dir / CHECKPOINT
        finish_round(
            number,
            previous,
            {
                "beta": beta,
                "rollout_success": successes / max(1, len(jobs)),
                "learner_step_fraction": learner_steps / max(1, steps),
            },
        )
    writer.close()
    _copy_checkpoint(previous, root / CHECKPOINT)
    state["checkpoint"] = str(root / CHECKPOINT)
    _save_state(root, state)
    return state
