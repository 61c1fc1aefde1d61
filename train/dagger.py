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
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

import envs  # noqa: F401  (registers the env ids in spawned workers)
from agent import Agent
from agent.evaluate import evaluate
from envs.data.collect import next_seed, record_episode
from envs.data.store import Dataset, DatasetError, DatasetWriter, Episode, atomic_write_bytes
from envs.experts import Expert, make_expert
from envs.spaces import action_space_spec
from envs.workers import check_env_id, make_env, map_jobs
from policies import InstructionPolicy
from train.bc import train_bc_policy
from train.checkpoint import CHECKPOINT, RUN_CONFIG, TRAINER_STATE, checkpoint_step, copy_checkpoint
from train.common import StopRequest
from train.config import ConfigError, RunConfig
from train.errors import TrainingInterrupted

STATE = "dagger.json"
# The run config the rounds train with, written as a file that ``--config`` reads back.
RUN_CONFIG_FILE = "config.resolved.yaml"
# ``instructcraft dagger``'s flag for each DaggerConfig field (eval_seed has none).
FLAGS = {
    "rounds": "--rounds",
    "episodes": "--episodes",
    "beta": "--beta",
    "beta_decay": "--beta-decay",
    "steps": "--steps-per-round",
    "eval_episodes": "--eval-episodes",
    "workers": "--workers",
}


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
    import multiprocessing

    import torch

    # One thread per worker process (they share the cores); never in this process, where a
    # capped pool runs the work in place and later training needs every thread.
    if multiprocessing.parent_process() is not None:
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
    """``dagger.json`` replaced atomically and synced: a crash leaves the last state whole."""
    atomic_write_bytes(out / STATE, json.dumps(state, indent=2, default=str).encode())


def _copy_demonstrations(data: str, aggregate: Path, skip_bad: bool) -> list[int]:
    """Copy the episodes ``data``'s index lists, and nothing else, into a new dataset at
    ``aggregate``; returns the episodes left out as unreadable (only with ``skip_bad``).

    Each episode is read through the store (which refuses index entries outside episodes/) and
    written by its writer. A symbolic link is never followed, even one the store would read: a
    link can point at a device or at a file of the user's that has no place in OUT/data."""
    source = Dataset(data)
    for number, entry in enumerate(source.episodes):
        path = source.root / entry["file"]
        for link in (path.parent, path):
            if link.is_symlink():
                raise DatasetError(
                    f"{link} (episode {number} of {data}) is a symbolic link: DAgger copies only "
                    "regular files; replace the link with what it points to"
                )
        if path.exists() and not path.is_file():
            raise DatasetError(f"{path} (episode {number} of {data}) is not a regular file")
    metadata = source.metadata
    skipped: list[int] = []
    with DatasetWriter(
        aggregate,
        env_id=metadata["env_id"],
        image_shape=tuple(metadata["image_shape"]),
        action_space=metadata["action_space"],
        frames_per_block=int(metadata["frames_per_block"]),
        info=metadata.get("info") or {},
    ) as writer:
        for number in range(len(source)):
            try:
                episode = source.episode(number)
            except (DatasetError, ValueError) as error:
                if not skip_bad:
                    raise DatasetError(
                        f"{error} (DAgger copies {data} into {aggregate}; set train.skip_bad_episodes=true "
                        "to leave unreadable episodes out)"
                    ) from None
                skipped.append(number)
                continue
            writer.add(episode)
    source.close()
    return skipped


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


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(data: Any) -> Any:
    """``data`` as JSON gives it back (tuples become lists), so stored and new settings compare."""
    return json.loads(json.dumps(data, default=str))


def _check_resume(
    root: Path, state: dict[str, Any], run: RunConfig, dagger: DaggerConfig, settings: dict[str, Any]
) -> None:
    """A resumed run continues the same experiment: refuse any setting that changes what the
    remaining rounds do, naming it. The worker count changes nothing (rollouts are the same
    whatever it is); a changed training config is allowed and said, as ``bc --resume`` does."""
    # A run recorded before a setting was kept is not checked on it.
    started = {flag: state.get(key, value) for flag, (key, value) in settings.items()}
    for flag in ("--data", "--init"):  # recorded as given by runs that kept relative paths
        started[flag] = _absolute(started[flag])
    for name, value in dataclasses.asdict(dagger).items():
        if name != "workers":
            started[FLAGS.get(name, f"dagger.{name}")] = state.get("dagger", {}).get(name, value)
    given = {flag: value for flag, (_, value) in settings.items()}
    given.update(
        {FLAGS.get(n, f"dagger.{n}"): v for n, v in dataclasses.asdict(dagger).items() if n != "workers"}
    )
    changed = [flag for flag in started if _plain(started[flag]) != _plain(given[flag])]
    if changed:
        listed = ", ".join(f"{flag} {started[flag]!r} (now {given[flag]!r})" for flag in changed)
        raise ConfigError(
            f"{root} was started with {listed}: resume with the same settings "
            f"(`{resume_command(root, state)}`), or start a new run in another --out"
        )
    if "run" in state:
        before, now = _flatten(state["run"]), _flatten(_plain(run.to_dict()))
        notes = [
            f"{key} {before[key]!r} -> {now[key]!r}"
            for key in before
            if key in now and before[key] != now[key]
        ]
        if notes:
            print(f"note: resuming {root} with changed settings: {', '.join(notes)}", file=sys.stderr)


def resume_command(root: Path, state: dict[str, Any]) -> str:
    """The ``instructcraft dagger`` command that continues the run in ``root``: every setting
    the run was started with, read from its state, and ``--resume``."""
    parts = ["instructcraft", "dagger"]
    if (root / RUN_CONFIG_FILE).exists():
        parts += ["--config", str(root / RUN_CONFIG_FILE)]
    parts += ["--data", state["data"], "--env", state["env_id"], "--out", str(root)]
    if state.get("expert"):
        parts += ["--expert", state["expert"]]
    if state.get("tasks"):
        parts += ["--tasks", *state["tasks"]]
    if state.get("init"):
        parts += ["--init", state["init"]]
    for name, flag in FLAGS.items():
        parts += [flag, str(state["dagger"][name])]
    return shlex.join([*parts, "--resume"])


def _round_jobs(state: dict[str, Any], dagger: DaggerConfig, number: int) -> list[RolloutJob]:
    """Every rollout of round ``number``, in order (seeds, tasks, beta)."""
    first = state["first_seed"] + (number - 1) * dagger.episodes
    tasks = state.get("tasks")
    beta = dagger.beta_for(number)
    return [
        RolloutJob(first + i, tasks[i % len(tasks)] if tasks else None, number, beta)
        for i in range(dagger.episodes)
    ]


def _round_entries(aggregate: Path, jobs: list[RolloutJob], number: int) -> list[dict[str, Any]]:
    """The index entries of round ``number``'s rollouts already in the aggregate (a resumed round
    finds those written before the interruption)."""
    seeds = {job.seed for job in jobs}
    return [
        entry
        for entry in Dataset(aggregate).episodes
        if entry.get("extra", {}).get("dagger_round") == number and entry.get("seed") in seeds
    ]


def _round_statistics(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Rollout success and the fraction of steps the learner chose, over all of a round's
    episodes (those of an interrupted run included)."""
    steps = sum(entry["length"] for entry in entries)
    learner = sum(entry["extra"].get("learner_steps", 0) for entry in entries)
    return {
        "rollout_success": sum(bool(entry.get("success")) for entry in entries) / max(1, len(entries)),
        "learner_step_fraction": learner / max(1, steps),
    }


def _roll_out(
    aggregate: Path,
    previous: Path,
    env_id: str,
    expert: str | Callable[[], Expert],
    jobs: list[RolloutJob],
    written: int,
    dagger: DaggerConfig,
    progress: bool,
    interrupted: Callable[[str, int], TrainingInterrupted],
) -> None:
    """Append the labelled rollouts of ``jobs`` to the aggregate. SIGINT or SIGTERM lets the
    running episode finish and be written, then raises ``interrupted(what finished, signal)``."""
    from tqdm import tqdm

    total = written + len(jobs)
    number, beta = jobs[0].round, jobs[0].beta
    bar = tqdm(total=total, initial=written, unit="ep", desc=f"dagger round {number}")
    bar.disable = not progress
    successes = 0
    metadata = Dataset(aggregate).metadata
    stop = StopRequest()
    try:
        with (
            stop.catching(),
            DatasetWriter(
                aggregate,
                env_id=metadata["env_id"],
                image_shape=tuple(metadata["image_shape"]),
                action_space=metadata["action_space"],
            ) as out_data,
        ):
            for episode in rollout_round(str(previous), env_id, expert, jobs, dagger.workers):
                out_data.add(episode)
                written += 1
                successes += int(episode.success)
                bar.update(1)
                bar.set_postfix(
                    success=f"{successes / max(1, bar.n - (total - len(jobs))):.2f}", beta=f"{beta:.2f}"
                )
                if stop:
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: the episode under way is dropped
        raise interrupted(f"{written} of {total} rollouts written to {aggregate}", signal.SIGINT) from None
    finally:
        bar.close()
    if stop:
        assert stop.signal_number is not None
        raise interrupted(f"{written} of {total} rollouts written to {aggregate}", stop.signal_number)


def _fine_tune(
    run: RunConfig, dagger: DaggerConfig, aggregate: Path, round_dir: Path, previous: Path, progress: bool
) -> None:
    """Fine-tune ``previous`` on the aggregate into ``round_dir``; a fine-tune that was
    interrupted (its checkpoint holds the trainer's state) continues from its last step."""
    train = dataclasses.replace(run.train, steps=dagger.steps)
    partial = round_dir / CHECKPOINT / RUN_CONFIG
    if (round_dir / CHECKPOINT / TRAINER_STATE).exists() and partial.exists():
        # The round's own architecture and settings, as its checkpoint recorded them.
        recorded = RunConfig.from_dict(json.loads(partial.read_text()))
        fine_tune = RunConfig(recorded.policy, train, run.rl)
        train_bc_policy(fine_tune, str(aggregate), str(round_dir), resume=str(round_dir), progress=progress)
    else:
        fine_tune = RunConfig(run.policy, train, run.rl)
        train_bc_policy(fine_tune, str(aggregate), str(round_dir), progress=progress, init=str(previous))


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

    SIGINT or SIGTERM stops the run after the episode or training step under way, keeping what
    finished, and raises ``TrainingInterrupted`` whose message gives the command that resumes.
    """
    from torch.utils.tensorboard import SummaryWriter

    root = Path(out)
    state = _load_state(root) if resume else {}
    if resume and not state:
        raise ConfigError(f"{root / STATE} is missing: nothing to resume in {root}; start without --resume")
    if not resume and (root / STATE).exists():
        raise ConfigError(
            f"{root} already holds a DAgger run: pass --resume to continue it, or another --out"
        )
    expert_name = expert if isinstance(expert, str) else None
    settings = {
        "--data": ("data", _absolute(data)),
        "--env": ("env_id", env_id),
        "--tasks": ("tasks", tasks),
        "--expert": ("expert", expert_name),
        "--init": ("init", _absolute(init)),
    }
    if state:
        _check_resume(root, state, run, dagger, settings)
    _check_inputs(data, env_id, expert, tasks, init)
    aggregate = root / "data"
    if not state:
        root.mkdir(parents=True, exist_ok=True)
        if aggregate.exists():
            shutil.rmtree(aggregate)  # a copy left by a run that stopped before its first state
        skipped = _copy_demonstrations(data, aggregate, run.train.skip_bad_episodes)
        if skipped:
            print(
                f"note: left {len(skipped)} unreadable episode(s) of {data} out of {aggregate}: {skipped[:20]}",
                file=sys.stderr,
            )
        (root / RUN_CONFIG_FILE).write_text(yaml.safe_dump(_plain(run.to_dict()), sort_keys=False))
        state = {
            **{key: value for key, value in settings.values()},
            "first_seed": next_seed(aggregate),
            "dagger": dataclasses.asdict(dagger),
            "run": _plain(run.to_dict()),
            "rounds": [],
        }
        _save_state(root, state)
    state["dagger"]["workers"] = dagger.workers  # the one setting a resumed run may change
    writer = SummaryWriter(str(root / "tb"))
    done = {entry["round"] for entry in state["rounds"]}

    def interrupted(number: int, stage: str) -> Callable[[str, int], TrainingInterrupted]:
        def make(what: str, signal_number: int) -> TrainingInterrupted:
            finished = ", ".join(str(entry["round"]) for entry in state["rounds"]) or "none"
            return TrainingInterrupted(
                f"DAgger interrupted in round {number}'s {stage} (rounds finished: {finished}): {what}; "
                f"resume with `{resume_command(root, state)}`",
                signal_number,
            )

        return make

    def train_round(number: int, round_dir: Path, train: Callable[[], None]) -> None:
        """``train()``; an interrupted one says where its checkpoint is and how DAgger resumes."""
        try:
            train()
        except TrainingInterrupted as error:
            checkpoint = round_dir / CHECKPOINT
            step = checkpoint_step(checkpoint)
            at = f" at step {step}" if step is not None else ""
            what = f"checkpoint{at} written to {checkpoint}"
            raise interrupted(number, "training")(what, error.exit_code - 128) from None

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
            copy_checkpoint(Path(init), round_dir / CHECKPOINT)
        else:
            # A round 0 that was interrupted continues from its checkpoint.
            partial = str(round_dir) if (round_dir / CHECKPOINT / TRAINER_STATE).exists() else None
            train_round(
                0,
                round_dir,
                lambda: train_bc_policy(
                    run, str(aggregate), str(round_dir), resume=partial, progress=progress
                ),
            )
        finish_round(0, round_dir / CHECKPOINT, {"trained_from": init or "demonstrations"})
    previous = round_dir / CHECKPOINT
    for number in range(1, dagger.rounds + 1):
        round_dir = root / f"round_{number:02d}"
        if number in done:
            previous = round_dir / CHECKPOINT
            continue
        jobs = _round_jobs(state, dagger, number)
        written = {entry["seed"] for entry in _round_entries(aggregate, jobs, number)}
        missing = [job for job in jobs if job.seed not in written]
        if missing:
            _roll_out(
                aggregate, previous, env_id, expert, missing, len(written), dagger, progress,
                interrupted(number, "rollouts"),
            )  # fmt: skip
        last = previous
        train_round(
            number,
            round_dir,
            lambda round_dir=round_dir, last=last: _fine_tune(
                run, dagger, aggregate, round_dir, last, progress
            ),
        )
        previous = round_dir / CHECKPOINT
        statistics = _round_statistics(_round_entries(aggregate, jobs, number))
        finish_round(number, previous, {"beta": dagger.beta_for(number), **statistics})
    writer.close()
    copy_checkpoint(previous, root / CHECKPOINT)
    state["checkpoint"] = str(root / CHECKPOINT)
    _save_state(root, state)
    return state
