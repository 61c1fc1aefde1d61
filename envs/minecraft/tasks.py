"""The MineRL v0.4 tasks the adapter and the dataset importer know: env name, instruction,
Enum actions, inventory items (from minerl's env specs) and the reward that marks success."""

from __future__ import annotations

from dataclasses import dataclass

from envs.errors import TaskError
from envs.minecraft.actions import NAVIGATE_ENUMS, OBTAIN_ENUMS

OBTAIN_INVENTORY: tuple[str, ...] = (
    "dirt", "coal", "torch", "log", "planks", "stick", "crafting_table", "wooden_axe", "wooden_pickaxe",
    "stone", "cobblestone", "furnace", "stone_axe", "stone_pickaxe", "iron_ore", "iron_ingot", "iron_axe",
    "iron_pickaxe",
)  # fmt: skip


@dataclass(frozen=True)
class MineRLTask:
    name: str  # our short name: instructcraft/MineRL-<name>-v0
    env_name: str  # minerl's id, also the directory name in the v0.4 dataset
    instruction: str
    enums: tuple[tuple[str, tuple[str, ...]], ...] = ()
    inventory: tuple[str, ...] = ()
    success_reward: float | None = None
    """a step reward >= this marks success; None: the episode ending before its time limit does"""


def _navigate(suffix: str) -> MineRLTask:
    return MineRLTask(
        f"Navigate{suffix}",
        f"MineRLNavigate{suffix}-v0",
        "walk to the goal the compass points to",
        NAVIGATE_ENUMS,
        ("dirt",),
        100.0,
    )


def _obtain(item: str, label: str, reward: float, dense: bool) -> MineRLTask:
    suffix = "Dense" if dense else ""
    return MineRLTask(
        f"Obtain{item}{suffix}",
        f"MineRLObtain{item}{suffix}-v0",
        label,
        OBTAIN_ENUMS,
        OBTAIN_INVENTORY,
        reward,
    )


MINERL_TASKS: dict[str, MineRLTask] = {
    task.name: task
    for task in (
        MineRLTask("Treechop", "MineRLTreechop-v0", "chop trees to collect logs"),
        _navigate(""),
        _navigate("Dense"),
        _navigate("Extreme"),
        _navigate("ExtremeDense"),
        _obtain("IronPickaxe", "obtain an iron pickaxe", 256.0, False),
        _obtain("IronPickaxe", "obtain an iron pickaxe", 256.0, True),
        _obtain("Diamond", "obtain a diamond", 1024.0, False),
        _obtain("Diamond", "obtain a diamond", 1024.0, True),
    )
}
BY_ENV_NAME: dict[str, MineRLTask] = {task.env_name: task for task in MINERL_TASKS.values()}


def task_for_env_name(env_name: str) -> MineRLTask:
    if env_name not in BY_ENV_NAME:
        raise TaskError(f"unknown MineRL env {env_name!r}; known: {sorted(BY_ENV_NAME)}")
    return BY_ENV_NAME[env_name]
