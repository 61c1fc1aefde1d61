"""A training checkpoint, for BC, DAgger and RL alike: writing it, reading it back, and what a
run may change when it continues from one.

A run's output folder holds CHECKPOINT/: the policy's own files (``config.json`` +
``model.safetensors``, what the agent loads; policies/persist.py writes and reads them) plus
the trainer's state (TRAINER_STATE: optimizer, counters, RNG) and the run's config
(RUN_CONFIG), to resume from. The folder is written atomically: NaN or inf weights and failed
writes leave the previous checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from policies import (
    CheckpointError,
    CheckpointWriteError,
    ConfigError,
    InstructionPolicy,
    NonFiniteWeightsError,
    PolicyConfig,
    with_legacy_defaults,
)
from policies.files import atomic_directory, describe_irregular, describe_write_failure, irregular_kind
from policies.persist import CONFIG_NAME, WEIGHTS_NAME, write_policy_files
from train.config import SECTIONS, RunConfig, flatten
from train.errors import SettingError
from train.report import strict_json

CHECKPOINT = "checkpoint"
TRAINER_STATE = "trainer.pt"
RUN_CONFIG = "run.json"


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint a path names: ``path/checkpoint`` for a run folder, else ``path`` itself."""
    path = Path(path)
    return path / CHECKPOINT if (path / CHECKPOINT).is_dir() else path


# -- writing ----------------------------------------------------------------------------


def portable_path(path: str | None, checkpoint: Path) -> str | None:
    """``path`` (a dataset, a checkpoint to start from) as a checkpoint records it: relative to
    the run folder holding ``checkpoint`` when it names a local file or folder, so the record
    holds no absolute path of this machine and still leads to the data when both are moved
    together; anything else (``pretrained:<name>``, a hub id, empty) as given."""
    if not path or not os.path.exists(path):
        return path
    run_folder = checkpoint.parent if checkpoint.name == CHECKPOINT else checkpoint
    return os.path.relpath(path, run_folder)


def intact_phrase(directory: Path) -> str:
    """What a failed write leaves behind, said before writing ``directory``."""
    return "the previous checkpoint is intact" if directory.exists() else "no checkpoint was written"


def write_checkpoint(
    directory: Path,
    policy: InstructionPolicy,
    extra: dict[str, Any],
    trainer_state: dict[str, Any],
    run_record: dict[str, Any],
) -> None:
    """``directory`` (CHECKPOINT) written atomically: the policy's files with ``extra`` in its
    config, ``trainer_state`` (TRAINER_STATE) and ``run_record`` (RUN_CONFIG).

    Weights with NaN or inf raise ``NonFiniteWeightsError``; a failed write (a full disk) raises
    ``CheckpointWriteError`` naming the file. Either way the previous checkpoint is left as it was.
    """
    intact = intact_phrase(directory)
    writing = directory / WEIGHTS_NAME
    try:
        with atomic_directory(directory) as staging:
            write_policy_files(policy, staging, extra=extra)
            writing = directory / TRAINER_STATE
            torch.save(trainer_state, staging / TRAINER_STATE)
            writing = directory / RUN_CONFIG
            (staging / RUN_CONFIG).write_text(strict_json(run_record))
            writing = directory
    except NonFiniteWeightsError:
        raise
    except (OSError, RuntimeError) as error:
        raise CheckpointWriteError(describe_write_failure(error, writing, intact)) from None


def copy_checkpoint(source: Path, target: Path) -> None:
    """The files of ``source`` copied into ``target``, replaced atomically (a DAgger round's start)."""
    with atomic_directory(target) as staging:
        for path in source.iterdir():
            if path.is_file():
                shutil.copy2(path, staging / path.name)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_bc_checkpoint(
    directory: Path, policy: InstructionPolicy, optimizer, scheduler, step: int, run: RunConfig, data: str
) -> None:
    """A BC checkpoint after ``step``: the policy, optimizer, schedule and RNG (``write_checkpoint``)."""
    write_checkpoint(
        directory,
        policy,
        extra={"trained_steps": step, "data": portable_path(data, directory)},
        trainer_state={
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
        },
        run_record=run.to_dict(),
    )


def save_rl_checkpoint(
    directory: Path,
    policy: InstructionPolicy,
    counters: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    run: RunConfig,
    env_id: str,
    init: str | None,
) -> None:
    """An RL checkpoint: the policy, ``counters`` (``num_timesteps``, ``n_updates``, ``kl_coef``),
    the optimizer and the RNG (a resumed run samples the actions an uninterrupted one would);
    fails as ``write_checkpoint`` does."""
    init = portable_path(init, directory)
    write_checkpoint(
        directory,
        policy,
        extra={"rl_timesteps": counters["num_timesteps"], "env_id": env_id, "init": init, "algorithm": "ppo"},
        trainer_state={
            **counters,
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
        },
        # The policy trained, not the config's: from a checkpoint (--init, --resume) it is the
        # checkpoint's, and the env decides the action space.
        run_record={**run.to_dict(), "policy": policy.config.to_dict(), "env_id": env_id, "init": init},
    )


# -- reading ----------------------------------------------------------------------------


def checkpoint_step(directory: Path) -> int | None:
    """The BC step a checkpoint was written after, or None when there is no readable one."""
    return recorded_count(directory, "trained_steps")


def last_good_checkpoint(directory: Path) -> str:
    """A phrase naming the checkpoint a stopped run leaves behind (its step), or saying none."""
    step = checkpoint_step(directory)
    if step is None:
        return "the last good checkpoint: none was written"
    return f"the last good checkpoint ({directory}, step {step}) is intact"


def read_trainer_state(directory: Path, device: str | torch.device) -> dict[str, Any]:
    """TRAINER_STATE of a checkpoint (tensors only: ``weights_only``)."""
    problem = describe_irregular(directory / TRAINER_STATE)
    if problem:  # torch.load would wait for a writer forever
        raise CheckpointError(problem)
    path = directory / TRAINER_STATE
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated, foreign, or holding more than tensors: torch says which
        said = " ".join(str(error).split())[:300]
        raise CheckpointError(
            f"cannot read {path} ({type(error).__name__}: {said}): it is not a trainer state written "
            "by `instructcraft bc` or `instructcraft rl`; start a new run instead of resuming this one"
        ) from None


def restore_rl_rng(state: dict[str, Any]) -> None:
    """The RNG an RL checkpoint saved (building the PPO reseeded torch)."""
    if "rng" in state:
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


def recorded_count(directory: Path, key: str) -> int | None:
    """A counter the checkpoint's ``config.json`` records (``trained_steps`` for BC,
    ``rl_timesteps`` for RL), or None when there is no readable one."""
    if irregular_kind(directory / CONFIG_NAME) is not None:  # reading a named pipe would block
        return None
    try:
        return int(json.loads((directory / CONFIG_NAME).read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_run_config(checkpoint: str | Path) -> dict[str, Any] | None:
    """The run config a checkpoint was trained with (its RUN_CONFIG: the sections of
    ``RunConfig``), the base a resumed run starts from; None for a checkpoint without a readable
    one (a resumed run then starts from the config it is given, and loading says what is wrong)."""
    directory = checkpoint_dir(checkpoint)
    if describe_irregular(directory / RUN_CONFIG):
        return None
    try:
        recorded = json.loads((directory / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict):
        return None
    sections = {name: recorded[name] for name in SECTIONS if isinstance(recorded.get(name), dict)}
    if "policy" in sections:  # written before a policy field existed: built with its legacy value
        sections["policy"] = with_legacy_defaults(sections["policy"])
    return sections


@dataclass(frozen=True)
class FinishedRun:
    """A run a resume would not continue: its checkpoint already holds the steps asked for."""

    folder: Path
    """the run folder (the checkpoint's parent)"""
    done: int
    """the steps (BC) or env steps (RL) its checkpoint holds"""

    def stored_summary(self) -> dict[str, Any] | None:
        """The folder's ``summary.json`` as the run wrote it, or None when it has no readable one."""
        try:
            return json.loads((self.folder / "summary.json").read_text())
        except (OSError, ValueError):
            return None


def finished_run(resume: str | Path, key: str, asked: int) -> FinishedRun | None:
    """``resume``'s run when its checkpoint's counter ``key`` (``recorded_count``) already
    reaches ``asked``: resuming it would train nothing, and must write nothing either."""
    directory = checkpoint_dir(resume)
    if not (directory / TRAINER_STATE).exists():
        return None  # not a training checkpoint: resuming refuses it in its own words
    done = recorded_count(directory, key)
    if done is None or done < asked:
        return None
    return FinishedRun(directory.parent if directory.name == CHECKPOINT else directory, done)


# -- continuing from a checkpoint -------------------------------------------------------

# A resumed run builds its policy from the config it is given: these fields change training
# only, so they may differ from the checkpoint's; any other policy field is the architecture.
RESUMABLE_POLICY_FIELDS = ("policy.instruction_dropout", "policy.fusion_kwargs.dropout")


def _saved_policy(path: Path) -> dict[str, Any]:
    """The ``policy`` section of a checkpoint's ``config.json``."""
    try:
        policy = json.loads(path.read_text())["policy"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{path} is not a valid policy config ({type(error).__name__}: {error}): pass a checkpoint "
            "written by `instructcraft bc` or `instructcraft rl`"
        ) from None
    if not isinstance(policy, dict):
        raise CheckpointError(f"{path}: 'policy' holds {type(policy).__name__}, not a mapping of fields")
    return policy


class _NotRecorded:
    """The old value of a setting the resumed run's record predates (shown as such in notes)."""

    def __repr__(self) -> str:
        return "(not recorded)"


NOT_RECORDED = _NotRecorded()


def settings_changed_on_resume(resume_dir: Path, run: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (checkpoint's value, value now)}``; raises for a change of architecture."""
    for name in (RUN_CONFIG, CONFIG_NAME):
        problem = describe_irregular(resume_dir / name)
        if problem:
            raise CheckpointError(problem)
    try:
        before = json.loads((resume_dir / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        before = None
    if not isinstance(before, dict):  # a checkpoint without a readable run.json: its policy only
        before = {"policy": _saved_policy(resume_dir / CONFIG_NAME)}
    # A checkpoint written before a policy field existed was built with its legacy value.
    before["policy"] = with_legacy_defaults(before.get("policy", {}))
    old, new = flatten({key: before.get(key, {}) for key in ("policy", "train")}), flatten(run.to_dict())
    changed = {key: (old[key], new[key]) for key in old if key in new and old[key] != new[key]}
    if before.get("train"):
        # A training setting added since the run was recorded: the run trained without it, and
        # its value now may change what it does (train.amp_cpu: bf16 on a CPU was train.amp's).
        changed.update(
            {key: (NOT_RECORDED, new[key]) for key in new if key.startswith("train.") and key not in old}
        )
    architecture = [
        key for key in changed if key.startswith("policy.") and key not in RESUMABLE_POLICY_FIELDS
    ]
    if architecture:
        listed = ", ".join(f"{key}: {changed[key][0]!r} -> {changed[key][1]!r}" for key in architecture)
        raise SettingError(
            f"--resume {resume_dir}: the checkpoint's policy differs from the config ({listed}); "
            "a resumed run keeps the architecture: drop those overrides (the checkpoint's run.json "
            "holds its config) or start a new run without --resume"
        )
    return changed


def apply_resumed_settings(optimizer, scheduler, cfg) -> None:
    """The restored optimizer and schedule keep the checkpoint's lr and weight decay; set the
    config's, so a changed ``train.lr`` is the one that trains (and the one recorded)."""
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    # The schedule's function is the one built from this run's config: a LambdaLR saves no
    # plain function in its state, so loading the checkpoint's state kept it.
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
        group["weight_decay"] = cfg.weight_decay
        group["lr"] = cfg.lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def resume_training(
    resume: str, run: RunConfig, policy: InstructionPolicy, optimizer, scheduler, device: str
) -> tuple[int, dict[str, tuple[Any, Any]]]:
    """Load a BC checkpoint's weights, optimizer, schedule and RNG; returns its step and the
    settings that changed since (``settings_changed_on_resume``)."""
    resume_dir = checkpoint_dir(resume)
    if not (resume_dir / TRAINER_STATE).exists():
        raise SettingError(
            f"{resume_dir} has no {TRAINER_STATE}: it is not a training checkpoint written by "
            "`instructcraft bc`, so it cannot be resumed (start a new run instead)"
        )
    problem = describe_irregular(resume_dir / TRAINER_STATE)
    if problem:  # torch.load would wait for a writer forever
        raise CheckpointError(problem)
    changed = settings_changed_on_resume(resume_dir, run)
    loaded = InstructionPolicy.from_pretrained(resume_dir, map_location=device)
    policy.load_state_dict(loaded.state_dict())
    state = read_trainer_state(resume_dir, device)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    apply_resumed_settings(optimizer, scheduler, run.train)
    _set_rng_state(state["rng"])
    return int(state["step"]), changed


def refuse_unapplied_policy_settings(
    checkpoint: str | Path,
    policy: PolicyConfig,
    overrides: list[str],
    flag: str,
    applied: tuple[str, ...] = (),
) -> None:
    """A run that takes its policy from ``checkpoint`` (``flag``: --init, --resume) trains that
    checkpoint's architecture, so a ``--set policy.*`` among ``overrides`` that gives another
    value than the checkpoint's would be ignored: refuse it, naming it. ``applied``: the fields
    the run does take from its config (``policy`` is the config's resolved policy)."""
    keys = [item.split("=", 1)[0].strip() for item in overrides if "=" in item]
    keys = [key for key in keys if key.startswith("policy.")]
    if not keys:
        return
    directory = checkpoint_dir(checkpoint)
    if describe_irregular(directory / CONFIG_NAME):
        return  # a named pipe is never read; loading the checkpoint refuses it in its own words
    try:
        saved_dict = json.loads((directory / CONFIG_NAME).read_text())["policy"]
        saved = PolicyConfig.from_dict(with_legacy_defaults(saved_dict))
    except (OSError, ValueError, KeyError):
        return  # not a checkpoint: the code that loads it says so, in its own words
    before, now = flatten(saved.to_dict(), "policy."), flatten(policy.to_dict(), "policy.")
    ignored = sorted(
        field
        for key in keys
        for field in now
        if (field == key or field.startswith(key + "."))
        and field not in applied
        and before.get(field) != now[field]
    )
    if ignored:
        listed = ", ".join(
            f"{field}={now[field]!r} (the checkpoint has {before.get(field)!r})" for field in ignored
        )
        remedy = (
            "start a new run in another --out" if flag == "--resume" else f"train a new policy without {flag}"
        )
        raise ConfigError(
            f"{flag} {checkpoint}: the run trains the checkpoint's policy as it was built, so --set "
            f"{listed} cannot apply: drop those overrides, or {remedy}"
        )
