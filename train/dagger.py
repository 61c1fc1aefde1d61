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
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import envs  # noqa: F401  (registers the env ids in spawned workers)
from agent.evaluate import evaluate
from agent.plan import Plan
from envs.data.collect import next_seed
from envs.data.store import Dataset, DatasetError, DatasetWriter
from envs.experts import Expert, make_expert
from envs.spaces import action_space_spec
from envs.workers import check_env_id, make_env
from policies import InstructionPolicy
from policies.text import make_text_encoder
from train.bc import train_bc_policy
from train.checkpoint import CHECKPOINT, RUN_CONFIG, TRAINER_STATE, checkpoint_step, copy_checkpoint
from train.common import StopRequest
from train.config import ConfigError, DaggerConfig, RunConfig
from train.dagger_rollout import RolloutJob, rollout_round, round_entries, round_jobs, round_statistics
from train.dagger_settings import (
    PLAN_FILE,
    RUN_CONFIG_FILE,
    STATE,
    absolute,
    check_resume,
    load_state,
    plain,
    resume_command,
    save_state,
)
from train.errors import TrainingInterrupted
from train.report import write_text


def _copy_demonstrations(data: str, aggregate: Path, skip_bad: bool) -> list[int]:
    """Copy the episodes ``data``'s index lists, and nothing else, into a new dataset at
    ``aggregate``; returns the episodes left out as unreadable (only with ``skip_bad``).

    Each episode is read through the store (which refuses index entries outside episodes/) and
    written by its writer. A symbolic link is never followed, even one the store would read: a
    link can point at a device or at a file of the user's that has no place in OUT/data."""
    source = Dataset(data)
    for number, entry in enumerate(source.episodes):
        path = source.root / entry["file"]
        parts = Path(entry["file"]).parts  # episodes/, its sub-folder, the file: none may be a link
        for link in (source.root.joinpath(*parts[:depth]) for depth in range(1, len(parts) + 1)):
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
    plan: Plan | None = None,
    run: RunConfig | None = None,
) -> None:
    """Everything that can fail is checked here, before any training or rollout."""
    check_env_id(env_id)
    if plan is not None and tasks:
        raise ConfigError("--plan gives each rollout its instructions: drop --tasks")
    made = make_expert(expert) if isinstance(expert, str) else None
    probe = make_env(env_id, tasks)
    env_spec = action_space_spec(probe.action_space)
    env_shape = list(probe.observation_space["image"].shape)
    if plan is not None:
        _check_plan_rollouts(env_id, probe, made if made is not None else expert(), plan)
    probe.close()
    metadata = Dataset(data).metadata
    if metadata["action_space"] != env_spec or metadata["image_shape"] != env_shape:
        raise ConfigError(
            f"{data} holds {metadata['action_space']} actions and {metadata['image_shape']} images but "
            f"{env_id} has {env_spec} and {env_shape}: use demonstrations collected on {env_id}"
        )
    policy = InstructionPolicy.from_pretrained(init) if init is not None else None
    if policy is not None:
        policy.check_action_space(env_spec)
    if plan is not None and (policy is not None or run is not None):
        # Instructions the policy reads whole: --init's text encoder, or the one round 0 trains.
        text = policy.config.text if policy is not None else run.policy.text
        encoder = policy.text_encoder if policy is not None else make_text_encoder(text)
        plan.check_lengths(encoder.token_count, text.max_tokens)


def _check_plan_rollouts(env_id: str, probe: Any, expert: Expert, plan: Plan) -> None:
    """A plan's rollouts need the open-ended game (a task env ends at its own task) and an
    expert that can be told each instruction's task."""
    if not getattr(probe.unwrapped, "open_ended", False):
        raise ConfigError(
            f"--plan plays whole games, and {env_id} ends each episode at its own task: "
            "use --env instructcraft/Crafter-OpenEnded-v0"
        )
    expert.follow(plan.steps[0].achievement)


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
    plan: Plan | None = None,
) -> None:
    """Append the labelled rollouts of ``jobs`` to the aggregate (with a ``plan``, each game's
    episodes, one per instruction). SIGINT or SIGTERM lets the running game finish and be
    written, then raises ``interrupted(what finished, signal)``."""
    from tqdm import tqdm

    total = written + len(jobs)
    number, beta = jobs[0].round, jobs[0].beta
    bar = tqdm(total=total, initial=written, unit="ep", desc=f"dagger round {number}")
    bar.disable = not progress
    successes = tried = 0  # episodes (a plan game's: instructions) that succeeded, and all of them
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
            for episodes in rollout_round(str(previous), env_id, expert, jobs, dagger.workers, plan):
                # A plan-following game's episodes (one per instruction) commit as one, so a
                # resumed round never finds half a game and counts its seed as written.
                out_data.add_all(episodes)
                written += 1
                successes += sum(int(episode.success) for episode in episodes)
                tried += len(episodes)
                bar.update(1)
                bar.set_postfix(success=f"{successes / max(1, tried):.2f}", beta=f"{beta:.2f}")
                if stop:
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: the episode under way is dropped
        raise interrupted(f"{written} of {total} rollouts written to {aggregate}", signal.SIGINT) from None
    finally:
        bar.close()
    if stop:
        assert stop.signal_number is not None
        raise interrupted(f"{written} of {total} rollouts written to {aggregate}", stop.signal_number)


def _fine_tune(run: RunConfig, aggregate: Path, round_dir: Path, previous: Path, progress: bool) -> None:
    """Fine-tune ``previous`` on the aggregate into ``round_dir``; a fine-tune that was
    interrupted (its checkpoint holds the trainer's state) continues from its last step."""
    train = dataclasses.replace(run.train, steps=run.dagger.steps)
    partial = round_dir / CHECKPOINT / RUN_CONFIG
    if (round_dir / CHECKPOINT / TRAINER_STATE).exists() and partial.exists():
        # The round's own architecture and settings, as its checkpoint recorded them.
        recorded = RunConfig.from_dict(json.loads(partial.read_text()))
        fine_tune = RunConfig(recorded.policy, train, run.rl, run.dagger)
        train_bc_policy(fine_tune, str(aggregate), str(round_dir), resume=str(round_dir), progress=progress)
    else:
        fine_tune = RunConfig(run.policy, train, run.rl, run.dagger)
        train_bc_policy(fine_tune, str(aggregate), str(round_dir), progress=progress, init=str(previous))


def _start(root: Path, run: RunConfig, data: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A new run's folder: the demonstrations copied into OUT/data, the resolved config and the
    first state (the settings it was started with, the first rollout seed, no rounds yet)."""
    aggregate = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    if aggregate.exists():
        shutil.rmtree(aggregate)  # a copy left by a run that stopped before its first state
    skipped = _copy_demonstrations(data, aggregate, run.train.skip_bad_episodes)
    if skipped:
        print(
            f"note: left {len(skipped)} unreadable episode(s) of {data} out of {aggregate}: {skipped[:20]}",
            file=sys.stderr,
        )
    write_text(root / RUN_CONFIG_FILE, yaml.safe_dump(plain(run.to_dict()), sort_keys=False))
    plan = settings.get("--plan", ("plan", None))[1]
    if plan is not None:  # the plan the rollouts follow, as a file `--plan` reads back on --resume
        write_text(root / PLAN_FILE, yaml.safe_dump(plan, sort_keys=False))
    state = {
        **{key: value for key, value in settings.values()},
        "first_seed": next_seed(aggregate),
        "dagger": dataclasses.asdict(run.dagger),
        "run": plain(run.to_dict()),
        "rounds": [],
    }
    save_state(root, state)
    return state


@dataclass
class _Rounds:
    """A DAgger run under way: its folder, state and TensorBoard writer; each round's training
    (``zero``, ``next``), how a round ends (``finish``) or is interrupted (``interrupted``)."""

    root: Path
    state: dict[str, Any]
    run: RunConfig
    env_id: str
    expert: str | Callable[[], Expert]
    tasks: list[str] | None
    progress: bool
    writer: Any  # a TensorBoard SummaryWriter
    plan: Plan | None = None

    @property
    def aggregate(self) -> Path:
        return self.root / "data"

    @property
    def dagger(self) -> DaggerConfig:
        return self.run.dagger

    def zero(self, init: str | None) -> Path:
        """Round 0's checkpoint: ``init``'s, or behavioral cloning on the demonstrations."""
        round_dir = self.root / "round_00"
        if 0 in {entry["round"] for entry in self.state["rounds"]}:
            return round_dir / CHECKPOINT
        if init is not None:
            copy_checkpoint(Path(init), round_dir / CHECKPOINT)
        else:
            # A round 0 that was interrupted continues from its checkpoint.
            partial = str(round_dir) if (round_dir / CHECKPOINT / TRAINER_STATE).exists() else None
            self.train(
                0,
                round_dir,
                lambda: train_bc_policy(
                    self.run, str(self.aggregate), str(round_dir), resume=partial, progress=self.progress
                ),
            )
        self.finish(0, round_dir / CHECKPOINT, {"trained_from": init or "demonstrations"})
        return round_dir / CHECKPOINT

    def next(self, number: int, previous: Path) -> Path:
        """Round ``number``'s checkpoint: ``previous`` rolled out with the expert labelling, the
        aggregate grown by those episodes, and ``previous`` fine-tuned on it. A round that was
        interrupted writes only the episodes it had not written, then trains."""
        round_dir = self.root / f"round_{number:02d}"
        if number in {entry["round"] for entry in self.state["rounds"]}:
            return round_dir / CHECKPOINT
        jobs = round_jobs(self.state, self.dagger, number)
        written = {entry["seed"] for entry in round_entries(self.aggregate, jobs, number)}
        missing = [job for job in jobs if job.seed not in written]
        if missing:
            _roll_out(
                self.aggregate, previous, self.env_id, self.expert, missing, len(written), self.dagger,
                self.progress, self.interrupted(number, "rollouts"), self.plan,
            )  # fmt: skip
        self.train(
            number,
            round_dir,
            lambda: _fine_tune(self.run, self.aggregate, round_dir, previous, self.progress),
        )
        statistics = round_statistics(round_entries(self.aggregate, jobs, number))
        self.finish(number, round_dir / CHECKPOINT, {"beta": self.dagger.beta_for(number), **statistics})
        return round_dir / CHECKPOINT

    def interrupted(self, number: int, stage: str) -> Callable[[str, int], TrainingInterrupted]:
        """The error that ends the run when round ``number``'s ``stage`` is interrupted."""

        def make(what: str, signal_number: int) -> TrainingInterrupted:
            finished = ", ".join(str(entry["round"]) for entry in self.state["rounds"]) or "none"
            return TrainingInterrupted(
                f"DAgger interrupted in round {number}'s {stage} (rounds finished: {finished}): {what}; "
                f"resume with `{resume_command(self.root, self.state)}`",
                signal_number,
            )

        return make

    def train(self, number: int, round_dir: Path, train: Callable[[], Any]) -> None:
        """``train()``; an interrupted one says where its checkpoint is and how DAgger resumes."""
        try:
            train()
        except TrainingInterrupted as error:
            checkpoint = round_dir / CHECKPOINT
            step = checkpoint_step(checkpoint)
            at = f" at step {step}" if step is not None else ""
            what = f"checkpoint{at} written to {checkpoint}"
            raise self.interrupted(number, "training")(what, error.exit_code - 128) from None

    def finish(self, number: int, checkpoint: Path, extra: dict[str, Any]) -> None:
        """Round ``number``'s result (evaluated when asked), logged and added to the state."""
        dagger, writer = self.dagger, self.writer
        result: dict[str, Any] = {"round": number, "checkpoint": str(checkpoint), **extra}
        summary = Dataset(self.aggregate).summary()
        result["dataset_episodes"], result["dataset_steps"] = summary["episodes"], summary["steps"]
        if dagger.eval_episodes:
            evaluation = evaluate(
                self.env_id,
                dagger.eval_episodes,
                checkpoint=str(checkpoint),
                tasks=self.tasks,
                workers=dagger.workers,
                seed=dagger.eval_seed,
                plan=self.plan,
            )
            if "crafter_score" in evaluation:  # the open-ended game: no task to succeed at, crafter scores it
                result["crafter_score"] = evaluation["crafter_score"]
                writer.add_scalar("dagger/crafter_score", result["crafter_score"], number)
            else:
                result["success"] = evaluation["mean_task_success"]
                result["eval"] = {task: row["success_rate"] for task, row in evaluation["tasks"].items()}
                writer.add_scalar("dagger/success", result["success"], number)
        writer.add_scalar("dagger/dataset_episodes", result["dataset_episodes"], number)
        writer.add_scalar("dagger/dataset_steps", result["dataset_steps"], number)
        for key in ("beta", "rollout_success", "learner_step_fraction"):
            if key in result:
                writer.add_scalar(f"dagger/{key}", result[key], number)
        writer.flush()
        self.state["rounds"].append(result)
        save_state(self.root, self.state)
        if self.progress:
            said = evaluated(result, digits=2)
            shown = f"{said}, " if said != NOT_EVALUATED else ""
            print(
                f"round {number}: {shown}dataset {result['dataset_episodes']} episodes / {result['dataset_steps']} steps"
            )


NOT_EVALUATED = "not evaluated"


def evaluated(result: dict[str, Any], digits: int = 3) -> str:
    """A round's evaluation as the command line says it: its success, its crafter score (the
    open-ended game), or that it was not evaluated."""
    if "success" in result:
        return f"success {result['success']:.{digits}f}"
    if "crafter_score" in result:
        return f"crafter score {result['crafter_score']:.{digits}f}"
    return NOT_EVALUATED


def _open(
    root: Path,
    run: RunConfig,
    data: str,
    env_id: str,
    expert: str | Callable[[], Expert],
    tasks: list[str] | None,
    init: str | None,
    resume: bool,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """The run's state: a resumed run's, checked against what it was started with, or a new
    run's, started once every input has been checked."""
    state = load_state(root) if resume else {}
    if resume and not state:
        raise ConfigError(f"{root / STATE} is missing: nothing to resume in {root}; start without --resume")
    if not resume and (root / STATE).exists():
        raise ConfigError(
            f"{root} already holds a DAgger run: pass --resume to continue it, or another --out"
        )
    settings = {
        "--data": ("data", absolute(data)),
        "--env": ("env_id", env_id),
        "--tasks": ("tasks", tasks),
        "--expert": ("expert", expert if isinstance(expert, str) else None),
        "--init": ("init", absolute(init)),
        "--plan": ("plan", None if plan is None else plan.to_file()),
    }
    if state:
        check_resume(root, state, run, settings)
    _check_inputs(data, env_id, expert, tasks, init, plan, run)
    if not state:
        state = _start(root, run, data, settings)
    state["dagger"]["workers"] = run.dagger.workers  # the one setting a resumed run may change
    return state


def run_dagger(
    run: RunConfig,
    data: str,
    out: str,
    env_id: str,
    expert: str | Callable[[], Expert],
    *,
    tasks: list[str] | None = None,
    init: str | None = None,
    resume: bool = False,
    progress: bool = True,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """Run DAgger with ``run.dagger``'s settings; returns the per-round summary (also written to
    OUT/dagger.json).

    ``expert`` is a registered expert name (``make_expert``) or a picklable factory.
    ``init`` starts from a trained checkpoint instead of training round 0 on ``data``.
    With a ``plan`` each rollout is one whole open-ended game in which the learner follows the
    plan and the expert labels the task of the instruction in effect (``run_plan_dagger_episode``);
    the aggregate gets one episode per instruction of each game.

    SIGINT or SIGTERM stops the run after the episode or training step under way, keeping what
    finished, and raises ``TrainingInterrupted`` whose message gives the command that resumes.
    """
    from torch.utils.tensorboard import SummaryWriter

    root = Path(out)
    state = _open(root, run, data, env_id, expert, tasks, init, resume, plan)
    writer = SummaryWriter(str(root / "tb"))
    rounds = _Rounds(root, state, run, env_id, expert, tasks, progress, writer, plan)
    checkpoint = rounds.zero(init)
    for number in range(1, run.dagger.rounds + 1):
        checkpoint = rounds.next(number, checkpoint)
    writer.close()
    copy_checkpoint(checkpoint, root / CHECKPOINT)
    state["checkpoint"] = str(root / CHECKPOINT)
    save_state(root, state)
    return state
