"""A BC run's checkpoint: writing it (``save_checkpoint``), naming the last good one for error
messages, and continuing from it (``resume_training``: weights, optimizer, schedule and RNG;
which settings a resumed run may change).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from policies import CheckpointError, InstructionPolicy, with_legacy_defaults
from policies.persist import describe_irregular, irregular_kind
from policies.policy import CONFIG_NAME
from train.common import CHECKPOINT, RUN_CONFIG, TRAINER_STATE, write_checkpoint
from train.config import RunConfig


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path, policy: InstructionPolicy, optimizer, scheduler, step: int, run: RunConfig, data: str
) -> None:
    """config.json + model.safetensors (what the agent loads) + trainer state, written atomically
    (``write_checkpoint``: NaN or inf weights and failed writes leave the previous one as it was)."""
    write_checkpoint(
        directory,
        policy,
        extra={"trained_steps": step, "data": data},
        trainer_state={
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
        },
        run_record=run.to_dict(),
    )


def last_good_checkpoint(directory: Path) -> str:
    """A phrase naming the checkpoint a stopped run leaves behind (its step), or saying none."""
    if irregular_kind(directory / CONFIG_NAME) is not None:  # reading a named pipe would block
        return "the last good checkpoint: none was written"
    try:
        step = json.loads((directory / CONFIG_NAME).read_text())["trained_steps"]
    except (OSError, ValueError, KeyError):
        return "the last good checkpoint: none was written"
    return f"the last good checkpoint ({directory}, step {step}) is intact"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


# A resumed run builds its policy from the config it is given: these fields change training
# only, so they may differ from the checkpoint's; any other policy field is the architecture.
RESUMABLE_POLICY_FIELDS = ("policy.instruction_dropout", "policy.fusion_kwargs.dropout")


def settings_changed_on_resume(resume_dir: Path, run: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (checkpoint's value, value now)}``; raises for a change of architecture."""
    for name in (RUN_CONFIG, CONFIG_NAME):
        problem = describe_irregular(resume_dir / name)
        if problem:
            raise CheckpointError(problem)
    try:
        before = json.loads((resume_dir / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        before = {"policy": json.loads((resume_dir / CONFIG_NAME).read_text())["policy"]}
    # A checkpoint written before a policy field existed was built with its legacy value.
    before["policy"] = with_legacy_defaults(before.get("policy", {}))
    old, new = _flatten({key: before.get(key, {}) for key in ("policy", "train")}), _flatten(run.to_dict())
    changed = {key: (old[key], new[key]) for key in old if key in new and old[key] != new[key]}
    architecture = [
        key for key in changed if key.startswith("policy.") and key not in RESUMABLE_POLICY_FIELDS
    ]
    if architecture:
        listed = ", ".join(f"{key}: {changed[key][0]!r} -> {changed[key][1]!r}" for key in architecture)
        raise ValueError(
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
    """Load a checkpoint's weights, optimizer, schedule and RNG; returns its step and the
    settings that changed since (``settings_changed_on_resume``)."""
    resume_dir = Path(resume)
    resume_dir = resume_dir / CHECKPOINT if (resume_dir / CHECKPOINT).is_dir() else resume_dir
    if not (resume_dir / TRAINER_STATE).exists():
        raise ValueError(
            f"{resume_dir} has no {TRAINER_STATE}: it is not a training checkpoint written by "
            "`instructcraft bc`, so it cannot be resumed (start a new run instead)"
        )
    problem = describe_irregular(resume_dir / TRAINER_STATE)
    if problem:  # torch.load would wait for a writer forever
        raise CheckpointError(problem)
    changed = settings_changed_on_resume(resume_dir, run)
    loaded = InstructionPolicy.from_pretrained(resume_dir, map_location=device)
    policy.load_state_dict(loaded.state_dict())
    state = torch.load(resume_dir / TRAINER_STATE, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    apply_resumed_settings(optimizer, scheduler, run.train)
    _set_rng_state(state["rng"])
    return int(state["step"]), changed
