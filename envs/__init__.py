"""instructcraft environments: Crafter-Instruct and BabyAI under one observation contract.

Importing this package registers the ``instructcraft/*`` ids with gymnasium, each with its
``EnvKind`` (``env_kind(env_id)``: the family, the default expert, whether ``reset`` takes a task),
so callers look a kind up instead of guessing it from the id's spelling.
Nothing here imports torch or other instructcraft packages.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import gymnasium as gym

from envs.babyai import LEVELS as BABYAI_LEVELS
from envs.crafter_tasks import TASKS

CRAFTER_ID = "instructcraft/Crafter-Instruct-v0"
CRAFTER_OPEN_ID = "instructcraft/Crafter-OpenEnded-v0"


def babyai_id(level: str) -> str:
    return f"instructcraft/BabyAI-{level}-v0"


@dataclass(frozen=True)
class EnvKind:
    """What the project knows about a registered env id without making the env."""

    family: str  # "crafter", "babyai", "minerl", or "other" for ids registered elsewhere
    expert: str | None = None  # the expert (``envs.experts.EXPERTS``) that solves its tasks
    task_choice: bool = False  # ``reset(options={"task": ...})`` chooses the task


CRAFTER = EnvKind("crafter", expert="crafter_planner", task_choice=True)
CRAFTER_OPEN_ENDED = EnvKind("crafter", expert="crafter_planner")
BABYAI = EnvKind("babyai", expert="babyai_bot")
MINERL = EnvKind("minerl")
OTHER = EnvKind("other")

KINDS: dict[str, EnvKind] = {}


def env_kind(env_id: str) -> EnvKind:
    """The kind an instructcraft id was registered with; ``OTHER`` for any other id."""
    return KINDS.get(env_id, OTHER)


def _register(env_id: str, entry_point: str, kind: EnvKind, **kwargs: object) -> None:
    KINDS[env_id] = kind
    if env_id not in gym.registry:
        # gymnasium's passive env checker stays on (its default): every id passes check_env.
        gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs)


def register_envs() -> None:
    """Register every instructcraft env id (idempotent)."""
    _register(CRAFTER_ID, "envs.crafter_instruct:CrafterInstructEnv", CRAFTER)
    _register(
        CRAFTER_OPEN_ID, "envs.crafter_instruct:CrafterInstructEnv", CRAFTER_OPEN_ENDED, open_ended=True
    )
    for level in BABYAI_LEVELS:
        _register(babyai_id(level), "envs.babyai:BabyAIInstructEnv", BABYAI, level=level)


def minerl_available() -> bool:
    return importlib.util.find_spec("minerl") is not None


def register_minerl_envs() -> list[str]:
    """Register ``instructcraft/MineRL-<Task>-v0`` (needs minerl to make them; registering is free)."""
    from envs.minecraft import MINERL_TASKS, minerl_id

    for task in MINERL_TASKS:
        _register(minerl_id(task), "envs.minecraft.env:MineRLInstructEnv", MINERL, task=task)
    return [minerl_id(task) for task in MINERL_TASKS]


def registered_ids() -> list[str]:
    register_envs()
    ids = [CRAFTER_ID, CRAFTER_OPEN_ID] + [babyai_id(level) for level in BABYAI_LEVELS]
    return ids + (register_minerl_envs() if minerl_available() else [])


register_envs()
if minerl_available():
    register_minerl_envs()

__all__ = [
    "BABYAI_LEVELS",
    "CRAFTER_ID",
    "CRAFTER_OPEN_ID",
    "KINDS",
    "TASKS",
    "EnvKind",
    "babyai_id",
    "env_kind",
    "minerl_available",
    "register_envs",
    "register_minerl_envs",
    "registered_ids",
]
