"""Minecraft envs: the MineRL v0.4 env adapter, its tasks and the factorized action layout.
MineRL itself is optional: only the env adapter needs it; the action layout does not. The
readers for MineRL v0.4 and OpenAI VPT demonstrations live in ``envs.data``."""

from envs.minecraft.actions import KEYBOARD_BUTTONS, VPT_BUTTONS, ActionLayout, bins_to_camera, camera_to_bins
from envs.minecraft.env import MineRLInstructEnv, minerl_id
from envs.minecraft.tasks import MINERL_TASKS

__all__ = [
    "KEYBOARD_BUTTONS",
    "MINERL_TASKS",
    "VPT_BUTTONS",
    "ActionLayout",
    "MineRLInstructEnv",
    "bins_to_camera",
    "camera_to_bins",
    "minerl_id",
]
