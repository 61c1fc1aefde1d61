"""instructcraft environments: Crafter-Instruct and BabyAI under one observation contract.

Importing this package registers the ``instructcraft/*`` ids with gymnasium.
Nothing here imports torch or other instructcraft packages.
"""

from __future__ import annotations

import importlib.util

import gymnasium as gym

from envs.babyai import LEVELS as BABYAI_LEVELS
from envs.tasks import TASKS

CRAFTER_ID = "instructcraft/Crafter-Instruct-v0"
CRAFTER_OPEN_ID = "instructcraft/Crafter-OpenEnded-v0"


def babyai_id(level: str) -> str:
    return f"instructcraft/BabyAI-{level}-v0"


def register_envs() -> None:
    """Register every instructcraft env id (idempotent)."""
    if CRAFTER_ID not in gym.registry:
        gym.register(
            id=CRAFTER_ID,
            entry_point="envs.crafter_instruct:CrafterInstructEnv",
            disable_env_checker=True,
        )
    if CRAFTER_OPEN_ID not in gym.registry:
        gym.register(
            id=CRAFTER_OPEN_ID,
            entry_point="envs.crafter_instruct:CrafterInstructEnv",
            kwargs={"open_ended": True},
            disable_env_checker=True,
        )
    for level in BABYAI_LEVELS:
        env_id = babyai_id(level)
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="envs.babyai:BabyAIInstructEnv",
                kwargs={"level": level},
                disable_env_checker=True,
            )


def minerl_available() -> bool:
    return importlib.util.find_spec("minerl") is not None


def register_minerl_envs() -> list[str]:
    """Register ``instructcraft/MineRL-<Task>-v0`` (needs minerl to make them; registering is free)."""
    from envs.minecraft import MINERL_TASKS, minerl_id

    for task in MINERL_TASKS:
        if minerl_id(task) not in gym.registry:
            gym.register(
                id=minerl_id(task),
                entry_point="envs.minecraft.env:MineRLInstructEnv",
                kwargs={"task": task},
                disable_env_checker=True,
            )
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
