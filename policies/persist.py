"""A policy's checkpoint: ``config.json`` (the config and what training adds) beside
``model.safetensors``. Writing refuses NaN or inf weights and replaces the folder atomically;
loading never unpickles, and checks a checkpoint (input from anyone) before building it: regular
files only, every config field present, the model the config describes matched against the
weights file's header on the meta device.

``InstructionPolicy.save_pretrained`` and ``from_pretrained`` call these functions; the model
itself (policies/policy.py) knows nothing of files.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from policies.config import PolicyConfig, VisionConfig
from policies.errors import CheckpointError, ConfigError, NonFiniteWeightsError
from policies.files import atomic_directory, describe_irregular
from policies.text import make_text_encoder

# The policy class is passed in (``InstructionPolicy.from_pretrained`` passes itself): the model
# imports this module, never the reverse.
Policy = TypeVar("Policy", bound=nn.Module)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
# A policy config is a few KB; anything far larger is no config worth reading into memory.
MAX_CONFIG_BYTES = 16 * 2**20
# Tensors a config may build beyond those its weights file holds before the build stops (the
# file decides the size; the margin only keeps a future non-saved buffer from tripping this).
EXTRA_TENSORS = 64


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding NaN or inf."""
    return [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def with_legacy_defaults(policy: Any) -> Any:
    """Checkpoints written before a config field existed were built without it: a missing
    ``vision.position_embedding`` means none, a missing ``vision.encoder`` means the IMPALA stack
    and a missing ``vision.token_pooling`` means averaging (today's defaults may differ). The
    cell encoder's own fields came with ``vision.encoder``: without it they are unused. A missing
    ``fusion_kwargs.history_stride`` means every frame of the window (stride 1), and a missing
    ``fusion_kwargs.recency_bias`` no bias on the frames' age."""
    if isinstance(policy, dict) and isinstance(policy.get("fusion_kwargs"), dict):
        legacy_fusion = {"history_stride": 1, "recency_bias": False}
        policy = {**policy, "fusion_kwargs": {**legacy_fusion, **policy["fusion_kwargs"]}}
    if isinstance(policy, dict) and isinstance(policy.get("vision"), dict):
        legacy: dict[str, Any] = {
            "position_embedding": False,
            "encoder": "impala",
            "token_pooling": "average",
        }
        if "encoder" not in policy["vision"]:
            legacy.update(cell_size=VisionConfig.cell_size, cell_blocks=VisionConfig.cell_blocks)
        policy = {**policy, "vision": {**legacy, **policy["vision"]}}
    return policy


class _TooManyTensors(Exception):
    """Raised inside a bounded build once it registers more tensors than allowed."""


@contextlib.contextmanager
def _bounded_build(limit: int) -> Iterator[None]:
    """Modules built in this block (by this thread) go on the meta device, so no weight takes
    memory, and the build stops with ``_TooManyTensors`` once it registers more than ``limit``
    parameters and buffers: a config claiming a million blocks stops after a few."""
    thread, count = threading.get_ident(), 0

    def hook(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        nonlocal count
        if tensor is None or threading.get_ident() != thread:
            return
        count += 1
        if count > limit:
            raise _TooManyTensors

    handles = [
        register_module_parameter_registration_hook(hook),
        register_module_buffer_registration_hook(hook),
    ]
    try:
        with torch.device("meta"):
            yield
    finally:
        for handle in handles:
            handle.remove()


def _saved_shapes(weights_path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a safetensors file, from its header alone (no tensor is read)."""
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            names = handle.keys()  # a safe_open handle has keys() but cannot be iterated
            return {name: tuple(handle.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError) as error:  # a truncated or foreign file: its header says so
        raise CheckpointError(
            f"cannot read {weights_path} ({type(error).__name__}: {error}): it is not a safetensors "
            "file written by `instructcraft bc` or `instructcraft rl`"
        ) from None


def read_checkpoint_config(config_path: Path) -> PolicyConfig:
    """A checkpoint's policy config: every field present (legacy ones aside), since a default
    may not be the value its weights were trained with."""
    size = config_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"{config_path} is {size} bytes, not a policy config (those are a few KB): "
            "it does not belong to a checkpoint"
        )
    try:
        payload = json.loads(config_path.read_text())
        return PolicyConfig.from_dict(with_legacy_defaults(payload["policy"]), complete=True)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ConfigError) as error:
        raise CheckpointError(f"{config_path} is not a valid policy config: {error}") from None


def _saved_state(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The weights a checkpoint holds: all but a frozen text backbone (it is loaded by name)."""
    frozen_prefix = "text_encoder.backbone."
    state = policy.state_dict()
    if not policy.config.text.finetune:
        state = {k: v for k, v in state.items() if not k.startswith(frozen_prefix)}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def write_policy_files(policy: nn.Module, directory: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` into an existing directory (not atomic: its
    callers write into an ``atomic_directory``, which also gives the files the umask's permissions).

    Raises ``NonFiniteWeightsError`` before writing anything if a weight is NaN or inf."""
    state = _saved_state(policy)
    bad = non_finite_tensors(state)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteWeightsError(
            f"the weights hold NaN or inf values (tensor {bad[0]!r}{more}): the model diverged, "
            "so they are not saved; lower the learning rate"
        )
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    payload = {"policy": policy.config.to_dict(), **(extra or {})}
    (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2))


def save_policy(
    policy: nn.Module, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Write ``config.json`` + ``model.safetensors``; the directory is replaced atomically."""
    with atomic_directory(directory) as staging:
        write_policy_files(policy, staging, extra)
    return Path(directory)


def _nested_checkpoint_hint(directory: Path) -> str:
    """A hint to pass ``DIR/checkpoint`` when ``directory`` is a run folder: one holding a
    checkpoint (its config and weights) one level down, as training's output folder does."""
    if not directory.is_dir():
        return ""
    try:
        nested = [
            sub
            for sub in sorted(directory.iterdir())
            if not sub.name.startswith(".")  # a write's staging folder
            and sub.is_dir()
            and (sub / WEIGHTS_NAME).is_file()
            and (sub / CONFIG_NAME).is_file()
        ]
    except OSError:
        return ""
    if not nested:
        return ""
    return f" (it looks like a run folder): pass {nested[0]}, the checkpoint inside it"


def load_policy(
    cls: type[Policy], directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> Policy:
    """Load ``config.json`` + ``model.safetensors``. Never unpickles anything.

    A checkpoint is input from anyone: its files must be regular files, its config must name
    every field, and the model the config describes is checked against the weights file's
    header (built on the meta device, stopped early if it grows past the file) before any
    weight takes memory, so a crafted config fails in seconds."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not weights_path.exists():
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{directory} holds pickle-based weights {pickles} and no {WEIGHTS_NAME}: pickles can run "
                "code when loaded, so they are refused; re-save the weights with safetensors"
            )
        raise CheckpointError(
            f"{weights_path} is missing: {directory} is not a checkpoint{_nested_checkpoint_hint(directory)}"
        )
    if not config_path.exists():
        raise CheckpointError(
            f"{config_path} is missing: {directory} is not a checkpoint{_nested_checkpoint_hint(directory)}"
        )
    for path in (config_path, weights_path):
        problem = describe_irregular(path)
        if problem:
            raise CheckpointError(problem)
    config = read_checkpoint_config(config_path)
    shapes = _saved_shapes(weights_path)
    text_encoder = None
    if config.text.encoder != "word":  # pretrained: its size is its own folder's, not the config's
        try:
            text_encoder = make_text_encoder(config.text)
        except (ConfigError, FileNotFoundError) as error:
            raise CheckpointError(f"{config_path}: {error}") from None
    _check_shapes(cls, config, text_encoder, shapes, config_path, weights_path)
    model = cls(config, text_encoder)
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError) as error:  # changed on disk since its header was read
        raise CheckpointError(f"cannot read {weights_path} ({type(error).__name__}: {error})") from None
    bad = non_finite_tensors(state)
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise NonFiniteWeightsError(
            f"{weights_path}: tensor {bad[0]!r}{more} holds NaN or inf values: these weights "
            "diverged during training and cannot act; use an earlier checkpoint or retrain "
            "with a lower learning rate"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = "text_encoder.backbone."
    missing = [k for k in missing if not (k.startswith(frozen) and not config.text.finetune)]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path} does not match {config_path}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(map_location)


def _check_shapes(
    cls: type[nn.Module],
    config: PolicyConfig,
    text_encoder: nn.Module | None,
    shapes: dict[str, tuple[int, ...]],
    config_path: Path,
    weights_path: Path,
) -> None:
    """Raise ``CheckpointError`` unless the model ``config`` describes holds exactly the
    tensors of ``shapes`` (the weights file's header; a frozen text backbone is not saved)."""
    limit = len(shapes) + EXTRA_TENSORS
    try:
        with _bounded_build(limit):
            skeleton = cls(config, text_encoder)
    except _TooManyTensors:
        raise CheckpointError(
            f"{weights_path} does not match {config_path}: the config describes a model of more than "
            f"{limit} tensors and the file holds {len(shapes)}; use the config.json written with these weights"
        ) from None
    frozen = "text_encoder.backbone."
    expected = {
        name: tuple(tensor.shape)
        for name, tensor in skeleton.state_dict().items()
        if config.text.finetune or not name.startswith(frozen)
    }
    wrong = [name for name in expected if name in shapes and expected[name] != shapes[name]]
    missing = [name for name in expected if name not in shapes]
    unexpected = [name for name in shapes if name not in expected]
    if not (wrong or missing or unexpected):
        return
    problems = [
        f"tensor {name!r} is {expected[name]} in the config's model but {shapes[name]} in the file"
        for name in wrong[:3]
    ]
    if len(wrong) > 3:
        problems.append(f"{len(wrong) - 3} more tensors differ in shape")
    if missing or unexpected:
        problems.append(f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    raise CheckpointError(f"{weights_path} does not match {config_path}: {'; '.join(problems)}")
