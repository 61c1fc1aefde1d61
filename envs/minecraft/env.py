"""MineRL v0.4 under instructcraft's observation contract.

``MineRLInstructEnv`` wraps a MineRL env (old gym API: ``reset() -> obs``,
``step(dict) -> obs, reward, done, info``): ``pov`` becomes ``image``, the task's instruction is
added, the Dict action becomes a factorized MultiDiscrete (``ActionLayout``), ``done`` is split
into ``terminated`` / ``truncated`` (MineRL's TimeLimit sets ``TimeLimit.truncated``).
``instructcraft/MineRL-<Task>-v0`` ids are registered when minerl is importable.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.errors import MissingDependencyError, TaskError
from envs.minecraft.actions import ActionLayout
from envs.minecraft.tasks import MINERL_TASKS
from envs.spaces import check_instruction, instruction_space


def minerl_id(task: str) -> str:
    return f"instructcraft/MineRL-{task}-v0"


class MineRLInstructEnv(gym.Env):
    """Args:
    task: a key of ``MINERL_TASKS`` (Treechop, Navigate, ObtainDiamond, ...).
    instruction: replaces the task's instruction.
    include_inventory: add ``inventory`` float32 (items,) in ``MineRLTask.inventory`` order.
    camera_bins: bins per camera axis (odd; VPT uses 11).
    env: an already made MineRL env (default: ``gym.make`` of minerl's id, which needs minerl).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}  # noqa: RUF012  (gymnasium convention)

    def __init__(
        self,
        task: str = "Treechop",
        *,
        instruction: str | None = None,
        include_inventory: bool = False,
        camera_bins: int = 11,
        env: Any = None,
        render_mode: str | None = "rgb_array",
    ) -> None:
        if task not in MINERL_TASKS:
            raise TaskError(f"unknown MineRL task {task!r}; known: {sorted(MINERL_TASKS)}")
        self.spec_task = MINERL_TASKS[task]
        self.instruction = check_instruction(instruction or self.spec_task.instruction)
        self.layout = ActionLayout(enums=self.spec_task.enums, camera_bins=camera_bins)
        if env is None:
            try:
                import gym as old_gym  # MineRL 0.4 registers its envs with the old gym package
                import minerl  # noqa: F401
            except ImportError as error:
                raise MissingDependencyError(
                    f"MineRL is not installed ({error}); see docs/minecraft.md, 'Installing MineRL' (Java 8 and "
                    "network access during its build) or pass env= an existing MineRL env"
                ) from None
            env = old_gym.make(self.spec_task.env_name)
        self._env = env
        self.include_inventory = include_inventory and bool(self.spec_task.inventory)
        self.render_mode = render_mode
        observation = {"image": spaces.Box(0, 255, (64, 64, 3), np.uint8), "instruction": instruction_space()}
        if self.include_inventory:
            observation["inventory"] = spaces.Box(0, np.inf, (len(self.spec_task.inventory),), np.float32)
        self.observation_space = spaces.Dict(observation)
        self.action_space = self.layout.space()
        self._frame: np.ndarray | None = None

    def _observation(self, raw: dict[str, Any]) -> dict[str, Any]:
        pov = np.asarray(raw["pov"], dtype=np.uint8)
        if pov.shape != (64, 64, 3):
            raise ValueError(f"MineRL pov has shape {pov.shape}, expected (64, 64, 3)")
        self._frame = pov
        out: dict[str, Any] = {"image": pov, "instruction": self.instruction}
        if self.include_inventory:
            inventory = raw.get("inventory", {})
            out["inventory"] = np.array(
                [float(np.asarray(inventory.get(item, 0))) for item in self.spec_task.inventory], np.float32
            )
        return out

    def _info(self, success: bool) -> dict[str, Any]:
        return {"instruction": self.instruction, "task": self.spec_task.name, "success": success}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None and hasattr(self._env, "seed"):
            self._env.seed(int(seed))
        return self._observation(self._env.reset()), self._info(False)

    def step(self, action: Any):
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        raw, reward, done, info = self._env.step(self.layout.decode(action))
        truncated = bool(done and info.get("TimeLimit.truncated", False))
        terminated = bool(done and not truncated)
        target = self.spec_task.success_reward
        success = bool(reward >= target) if target is not None else terminated
        out = self._info(success)
        out["minerl_info"] = info
        return self._observation(raw), float(reward), terminated, truncated, out

    def render(self) -> np.ndarray | None:
        return None if self.render_mode is None else self._frame

    def close(self) -> None:
        if hasattr(self._env, "close"):
            self._env.close()
