"""Running PPO: the vector env, the ``SequencePPO`` built from a run config, its checkpoint (the
format and the writing: train/checkpoint.py),
TensorBoard logs that continue across a resume, and ``train_rl``, the driver behind
``instructcraft rl``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from envs.data.store import action_space_spec
from envs.wrappers import make_tokenized_env
from policies import (
    ActionSpaceConfig,
    CheckpointError,
    NonFiniteWeightsError,
    PolicyConfig,
    with_legacy_defaults,
)
from policies.files import describe_irregular
from policies.persist import CONFIG_NAME
from train.checkpoint import (
    CHECKPOINT,
    TRAINER_STATE,
    FinishedRun,
    finished_run,
    intact_phrase,
    read_trainer_state,
    recorded_run_config,
    restore_rl_rng,
    save_rl_checkpoint,
)
from train.common import (
    StopRequest,
    children_ignore_interrupts,
    refuse_existing_run,
    resolve_device,
    run_folder_lock,
)
from train.config import RunConfig, changed_settings, describe_changes
from train.errors import SettingError, TrainingDiverged, TrainingInterrupted
from train.report import write_json
from train.rl.ppo import SequencePPO
from train.rl.sb3 import ResumableTensorBoard


def make_env(env_id: str, n_envs: int, vec_env: str, seed: int, max_tokens: int, **env_kwargs: Any) -> VecEnv:
    """A Monitor-wrapped SB3 vector env of ``make_tokenized_env(env_id)``."""
    gym.spec(env_id)  # a clear error for an unknown id, before any subprocess starts
    factory = partial(make_tokenized_env, env_id, max_tokens=max_tokens, **env_kwargs)
    cls = SubprocVecEnv if vec_env == "subproc" and n_envs > 1 else DummyVecEnv
    if cls is SubprocVecEnv:
        # An env that cannot be built (no instruction, a bad task) fails here with its own
        # message; in a subprocess it would only show as a broken pipe.
        factory().close()
    kwargs = {"start_method": "spawn"} if cls is SubprocVecEnv else None
    return make_vec_env(factory, n_envs=n_envs, seed=seed, vec_env_cls=cls, vec_env_kwargs=kwargs)


def build_ppo(
    run: RunConfig,
    env: VecEnv,
    init: str | None = None,
    reference: str | None = None,
    tensorboard: str | None = None,
    verbose: int = 0,
) -> SequencePPO:
    """``init``: weights to start from (else ``run.policy`` from scratch); ``reference``: the
    KL target (default ``init``)."""
    cfg = run.rl
    algo = SequencePPO(
        env,
        policy_config=run.policy.to_dict(),
        init=init,
        reference=reference,
        kl_coef=cfg.kl_coef,
        kl_decay=cfg.kl_decay,
        bc_coef=cfg.bc_coef,
        bc_data=cfg.bc_data,
        bc_batch_size=cfg.bc_batch_size,
        learning_rate=cfg.lr,
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        target_kl=cfg.target_kl or None,
        tensorboard_log=tensorboard,
        seed=cfg.seed,
        device=resolve_device(cfg.device),
        verbose=verbose,
    )
    if tensorboard is None:
        # Without a logger of its own, every learn() makes SB3 create an empty folder under the
        # system's temporary directory (SB3-<time>); `rl` attaches its own, benchmarks need none.
        algo.set_logger(silent_logger(verbose))
    return algo


def silent_logger(verbose: int = 0) -> Logger:
    """An SB3 logger that writes no files (stdout only with ``verbose``)."""
    return Logger(None, [HumanOutputFormat(sys.stdout)] if verbose else [])


def save_checkpoint(
    directory: Path, algo: SequencePPO, run: RunConfig, env_id: str, init: str | None
) -> None:
    """``save_rl_checkpoint`` of ``algo`` as it stands; diverged (NaN or inf) weights raise
    ``TrainingDiverged``, leaving the previous checkpoint as it was."""
    intact = intact_phrase(directory)
    counters = {"num_timesteps": algo.num_timesteps, "n_updates": algo.updates, "kl_coef": algo.kl_coef}
    try:
        save_rl_checkpoint(directory, algo.model, counters, algo.policy.optimizer, run, env_id, init)
    except NonFiniteWeightsError as error:
        raise TrainingDiverged(
            f"after {algo.num_timesteps} env steps: {error} (rl.lr); training stopped; {intact}"
        ) from None


def load_trainer_state(algo: SequencePPO, checkpoint: Path) -> None:
    """Continue from ``checkpoint``'s optimizer, step counts, KL coefficient and RNG."""
    state = read_trainer_state(checkpoint, algo.device)
    algo.policy.optimizer.load_state_dict(state["optimizer"])
    algo.num_timesteps = int(state["num_timesteps"])
    algo.updates = int(state["n_updates"])
    algo.kl_coef = float(state["kl_coef"])
    restore_rl_rng(state)


def attach_logger(algo: SequencePPO, folder: Path, resume: bool, verbose: int) -> Logger:
    """SB3's logger writing TensorBoard scalars into ``folder`` (and to stdout with ``verbose``)."""
    # SB3 logs at step = num_timesteps; a resumed run keeps the checkpoint's own point.
    formats = [ResumableTensorBoard(str(folder), algo.num_timesteps + 1 if resume else None)]
    if verbose:
        formats.append(HumanOutputFormat(sys.stdout))
    logger = Logger(str(folder), formats)
    algo.set_logger(logger)
    return logger


class _StopWhenRequested(BaseCallback):
    """Ends ``learn`` at the next env step once SIGINT or SIGTERM arrived."""

    def __init__(self, stop: StopRequest) -> None:
        super().__init__()
        self.stop = stop

    def _on_step(self) -> bool:
        return not self.stop


def check_init_matches_env(checkpoint: str, env: VecEnv, env_id: str, flag: str) -> None:
    """Refuse a checkpoint built for another action space or frame size, before any rollout."""
    path = Path(checkpoint) / CONFIG_NAME
    problem = describe_irregular(path)
    if problem:
        raise CheckpointError(f"{flag} {checkpoint}: {problem}")
    try:
        config = PolicyConfig.from_dict(with_legacy_defaults(json.loads(path.read_text())["policy"]))
    except (OSError, ValueError, KeyError) as error:
        raise SettingError(
            f"{flag} {checkpoint}: {path} is not a policy checkpoint's config ({error})"
        ) from None
    expected, actual = config.action_space.to_spec(), action_space_spec(env.action_space)
    if ActionSpaceConfig.from_spec(actual) != config.action_space:
        raise SettingError(
            f"{flag} {checkpoint}: the checkpoint acts in {expected} but {env_id} has {actual}; "
            f"use a checkpoint trained on {env_id} (or train from scratch without {flag})"
        )
    image = env.observation_space["image"].shape
    size = tuple(image[1:]) if image[0] == 3 and image[-1] != 3 else tuple(image[:2])
    if tuple(config.vision.image_size) != size:
        raise SettingError(
            f"{flag} {checkpoint}: the checkpoint reads {tuple(config.vision.image_size)} frames but "
            f"{env_id} gives {size}; use a checkpoint trained on {env_id}"
        )


def _learn(
    algo: SequencePPO,
    stop: StopRequest,
    steps: int,
    resume: bool,
    progress: bool,
    checkpoint_every: int,
    save: Callable[[], None],
) -> float:
    """``algo.learn`` up to ``steps`` env steps in all, calling ``save`` every
    ``checkpoint_every`` steps, until done or ``stop``; returns the seconds it took. A stopped
    run's step count is that of its last update (the steps of an unfinished rollout trained
    nothing)."""
    last_saved = [algo.num_timesteps]
    trained = [algo.num_timesteps]

    def after_update(current: SequencePPO) -> None:
        trained[0] = current.num_timesteps
        if current.num_timesteps - last_saved[0] >= checkpoint_every:
            save()
            last_saved[0] = current.num_timesteps

    algo.after_update = after_update
    started = time.perf_counter()
    with stop.catching():
        # SB3 counts ``total_timesteps`` from where a continued run stands.
        algo.learn(
            total_timesteps=max(steps - algo.num_timesteps, 0) if resume else steps,
            reset_num_timesteps=not resume,
            callback=_StopWhenRequested(stop),
            progress_bar=progress,
        )
    wall = time.perf_counter() - started
    if stop:
        algo.num_timesteps = trained[0]
    return wall


def planned_timesteps(steps: int, start: int, rollout: int) -> int:
    """The env steps a run asked for ``steps`` in all really ends at: from ``start``, PPO collects
    whole rollouts of ``rollout`` (n_envs x n_steps) env steps until it reaches ``steps``."""
    if start >= steps:
        return start
    return start + -(-(steps - start) // rollout) * rollout


def rounding_note(steps: int, start: int, n_envs: int, n_steps: int) -> str | None:
    """What a run of ``steps`` env steps really runs, when whole rollouts take it past ``steps``."""
    rollout = n_envs * n_steps
    planned = planned_timesteps(steps, start, rollout)
    if planned == steps:
        return None
    rollouts = (planned - start) // rollout
    resumed = f" (from {start})" if start else ""
    return (
        f"note: --steps {steps} runs {planned} env steps{resumed}: PPO trains on whole rollouts, "
        f"{rollouts} rollout{'s' if rollouts != 1 else ''} of {n_envs} env{'s' if n_envs != 1 else ''} "
        f"x {n_steps} steps (rl.n_envs x rl.n_steps)"
    )


def finished_rl_run(out: str | Path, steps: int) -> FinishedRun | None:
    """The run in ``out`` when its checkpoint already holds ``steps`` env steps or more."""
    return finished_run(Path(out) / CHECKPOINT, "rl_timesteps", steps)


def train_rl(
    run: RunConfig,
    env_id: str,
    steps: int,
    out: str,
    init: str | None = None,
    resume: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    verbose: int = 0,
    refuse_existing: bool = False,
) -> dict[str, Any]:
    """PPO for ``steps`` env steps; writes ``out/checkpoint`` (the final policy), ``out/tb``
    (SB3's scalars + per-task success) and ``out/summary.json``. ``resume`` continues from
    ``out/checkpoint`` (weights, optimizer, step count; envs restart with fresh episodes).

    ``refuse_existing`` (what ``instructcraft rl`` does) refuses, without ``resume``, an ``out``
    that already holds a run's checkpoint (``RunFolderError``) rather than replace it. ``out``
    is locked for the run, so a second run into it fails at once.

    ``resume`` of a run whose checkpoint already holds ``steps`` env steps trains and writes
    nothing: it returns the summary the run wrote. PPO trains on whole rollouts, so a run ends at
    the first multiple of n_envs x n_steps past ``steps`` (a note on stderr says so).

    SIGINT or SIGTERM ends the run at the next env step with a checkpoint of the last update
    and raises ``TrainingInterrupted`` (its message says how to resume)."""
    out_dir = Path(out)
    if refuse_existing and not resume:
        refuse_existing_run(out_dir, "rl", "--resume")
    finished = finished_rl_run(out_dir, steps) if resume else None
    if finished is not None:  # nothing to train: its files stay as the run left them
        return finished.stored_summary() or {
            "timesteps": finished.done,
            "checkpoint": str(out_dir / CHECKPOINT),
        }
    with run_folder_lock(out_dir):
        return _train(run, env_id, steps, out_dir, init, resume, env_kwargs, progress, verbose)


def _train(
    run: RunConfig,
    env_id: str,
    steps: int,
    out_dir: Path,
    init: str | None,
    resume: bool,
    env_kwargs: dict[str, Any] | None,
    progress: bool,
    verbose: int,
) -> dict[str, Any]:
    """``train_rl`` once ``out_dir`` is checked and locked."""
    cfg = run.rl
    checkpoint = out_dir / CHECKPOINT
    start_from = init
    if resume:
        if not (checkpoint / TRAINER_STATE).exists():
            raise SettingError(
                f"--resume: {out_dir} holds no RL checkpoint ({checkpoint / TRAINER_STATE} does not exist), "
                "so there is nothing to continue: run without --resume to start it"
            )
        start_from = str(checkpoint)
        recorded = recorded_run_config(checkpoint)
        changed = changed_settings(recorded, run, ("rl",)) if recorded else {}
        if changed:
            print(
                f"note: resuming {out_dir} with changed settings: {describe_changes(changed)}",
                file=sys.stderr,
            )
    with children_ignore_interrupts():  # subprocess envs start here and leave Ctrl-C to us
        env = make_env(env_id, cfg.n_envs, cfg.vec_env, cfg.seed, cfg.max_tokens, **(env_kwargs or {}))
    stop = StopRequest()
    logger: Logger | None = None
    try:
        if start_from:
            check_init_matches_env(start_from, env, env_id, "--resume" if resume else "--init")
        out_dir.mkdir(parents=True, exist_ok=True)
        algo = build_ppo(run, env, init=start_from, reference=init, verbose=verbose)
        if resume:
            load_trainer_state(algo, checkpoint)
        note = rounding_note(steps, algo.num_timesteps if resume else 0, cfg.n_envs, cfg.n_steps)
        if note:
            print(note, file=sys.stderr)
        logger = attach_logger(algo, out_dir / "tb", resume, verbose)
        save = partial(save_checkpoint, checkpoint, algo, run, env_id, init)
        start_steps = algo.num_timesteps
        wall = _learn(algo, stop, steps, resume, progress, cfg.checkpoint_every, save)
        save()
    finally:
        env.close()
        if logger is not None:
            logger.close()
    if stop:
        assert stop.signal_number is not None
        command = f"instructcraft rl --env {env_id} --steps {steps} --out {out_dir} --resume"
        raise TrainingInterrupted(
            f"interrupted after {algo.num_timesteps} of {steps} env steps: checkpoint written to "
            f"{checkpoint}; resume with `{command}` (and the same --config/--set/--tasks/--reward"
            f"{f', --init {init}' if init else ''})",
            stop.signal_number,
        )
    summary = {
        "env_id": env_id,
        "init": init,
        "timesteps": algo.num_timesteps,
        "steps_per_s": (algo.num_timesteps - start_steps) / max(wall, 1e-9),
        "success_rate_per_task": algo.task_success(),
        "episode_return_mean": safe_mean([e["r"] for e in algo.ep_info_buffer])
        if algo.ep_info_buffer
        else None,
        "timings_s": dict(algo.timings),
        "checkpoint": str(checkpoint),
    }
    write_json(out_dir / "summary.json", summary)
    return summary
