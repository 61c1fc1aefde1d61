"""BabyAI levels from minigrid under the instructcraft observation contract.

The image is the agent's partial view (7x7 cells) rendered as RGB and resized to 64x64 with a
precomputed nearest-neighbour index; ``mission`` becomes ``instruction``. Level generation in
minigrid prints "Sampling rejected" lines; they are swallowed here.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401  (registers the BabyAI-* ids)
import numpy as np
from minigrid.core.actions import Actions

from envs.errors import EnvSettingError, TaskError
from envs.spaces import observation_space

LEVELS: tuple[str, ...] = (
    "GoToRedBall",
    "GoToRedBallGrey",
    "GoToObj",
    "GoToLocal",
    "PickupLoc",
    "PutNextLocal",
    "GoTo",
    "Open",
    "Pickup",
)


def nearest_index(source: int, target: int) -> np.ndarray:
    """Row (or column) indices that resize ``source`` pixels to ``target`` by nearest neighbour."""
    return ((np.arange(target) + 0.5) * source / target).astype(np.intp)


class BabyAIInstructEnv(gym.Env):
    """A minigrid BabyAI level with an RGB partial view and ``instruction`` = ``mission``.

    Args:
        level: the BabyAI level name without prefix or version, e.g. "GoToLocal".
        size: observation size (H, W).
        tile_size: pixels per grid cell when rendering the 7x7 view before resizing.
        render_size: size of ``render()`` frames (the agent's view); defaults to ``size``.
        max_steps: override the level's own step limit.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012  (gymnasium convention)
    action_names: tuple[str, ...] = tuple(action.name for action in Actions)

    def __init__(
        self,
        level: str = "GoToLocal",
        size: tuple[int, int] = (64, 64),
        tile_size: int = 8,
        render_size: tuple[int, int] | None = None,
        max_steps: int | None = None,
        render_mode: str | None = "rgb_array",
    ) -> None:
        env_id = f"BabyAI-{level}-v0"
        if env_id not in gym.registry:
            raise TaskError(f"unknown BabyAI level {level!r}; try one of {list(LEVELS)}")
        if render_mode not in (None, "rgb_array"):
            raise EnvSettingError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        kwargs = {} if max_steps is None else {"max_steps": max_steps}
        # The unwrapped level: minigrid's own wrappers (order checks, step limit) are not needed,
        # the level already truncates at max_steps.
        self._env = gym.make(env_id, **kwargs).unwrapped
        self.level = level
        self.tile_size = tile_size
        self.size = tuple(size)
        self.render_size = tuple(render_size) if render_size is not None else self.size
        self.render_mode = render_mode
        view = self._env.agent_view_size * tile_size
        self._rows = nearest_index(view, self.size[0])
        self._cols = nearest_index(view, self.size[1])
        self.observation_space = observation_space(*self.size)
        self.action_space = self._env.action_space
        self.instruction = ""
        self.level_seed = 0
        self._image: np.ndarray | None = None

    @property
    def unwrapped_level(self) -> Any:
        """minigrid's level env, for the BabyAI bot."""
        return self._env

    def _observe(self) -> dict[str, Any]:
        view = self._env.get_pov_render(self.tile_size)
        # Two 1-D takes are ~8x faster than one 2-D fancy index.
        self._image = view.take(self._rows, axis=0).take(self._cols, axis=1)
        return {"image": self._image, "instruction": self.instruction}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self.level_seed = int(self.np_random.integers(2**31 - 1))
        with contextlib.redirect_stdout(io.StringIO()):
            self._env.reset(seed=self.level_seed)
        self.instruction = self._env.mission
        info = {"instruction": self.instruction, "task": self.level, "success": False}
        return self._observe(), info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._image is None:
            raise RuntimeError("call reset() before step()")
        _, reward, terminated, truncated, _ = self._env.step(action)
        success = bool(terminated and reward > 0)
        info = {"instruction": self.instruction, "task": self.level, "success": success}
        return self._observe(), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        if self._image is None:
            raise RuntimeError("call reset() before render()")
        if self.render_size == self.size:
            return self._image
        view = self._env.get_pov_render(self.tile_size)
        rows = nearest_index(view.shape[0], self.render_size[0])
        cols = nearest_index(view.shape[1], self.render_size[1])
        return view.take(rows, axis=0).take(cols, axis=1)
