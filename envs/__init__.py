"""instructcraft environments: Crafter-Instruct and BabyAI under one observation contract.

Importing this package registers the ``instructcraft/*`` ids with gymnasium.
Nothing here imports torch or other instructcraft packages.
"""

from __future__ import annotations

import importlib.util

import gymnasium as gym

from envs.babyai import LEVELS as BABYAI_LEVELS
from envs.crafter_tasks import TASKS

CRAFTER_ID = "instructcraft/Crafter-Instruct-v0"
CRAFTER_OPEN_ID = "instructcraft/Crafter-OpenEnded-v0"


def babyai_id(level: str) -> str:
    return f"instructcraft/BabyAI-{level}-v0"


def _register(env_id: str, entry_point: str, **kwargs: object) -> None:
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs, disable_env_checker=True)


def register_envs() -> None:
    """Register every instructcraft env id (idempotent)."""
    _register(CRAFTER_ID, "envs.crafter_instruct:CrafterInstructEnv")
    _register(CRAFTER_OPEN_ID, "envs.crafter_instruct:CrafterInstructEnv", open_ended=True)
    for level in BABYAI_LEVELS:
        _register(babyai_id(level), "envs.babyai:BabyAIInstructEnv", level=level)


def minerl_available() -> bool:
    return importlib.util.find_spec("minerl") is not None


def register_minerl_envs() -> list[str]:
    """Register ``instructcraft/MineRL-<Task>-v0`` (needs minerl to make them; registering is free)."""
    from envs.minecraft import MINERL_TASKS, minerl_id

    for task in MINERL_TASKS:
        _register(minerl_id(task), "envs.minecraft.env:MineRLInstructEnv", task=task)
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
    "TASKS",
    "babyai_id",
    "minerl_available",
    "register_envs",
    "register_minerl_envs",
    "registered_ids",
]
