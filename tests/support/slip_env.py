"""A corridor where a cloned policy provably compounds its errors, for the DAgger test.

Two rows, ``length`` columns; the agent starts at the left of the top row and must reach the
right end of the top row. Each step it may slip into the bottom row (the ditch) with
probability ``slip``; in the ditch "right" still moves right but never reaches the goal, only
"up" climbs back. Demonstrations recorded with ``slip=0`` show only the top row labelled
"right", so behavioral cloning learns "always right" and succeeds only when no slip happens
(0.7 ** 5 = 0.17 at the defaults); an agent that learned "up in the ditch" succeeds almost always.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.experts import Expert
from envs.spaces import observation_space

SLIP_ID = "test/SlipCorridor-v0"
INSTRUCTION = "walk to the end of the corridor"
RIGHT, UP, DOWN = 0, 1, 2


class SlipCorridorEnv(gym.Env):
    def __init__(self, length: int = 6, slip: float = 0.3) -> None:
        self.observation_space = observation_space(16, 16)
        self.action_space = spaces.Discrete(3)
        self.length, self.slip = length, slip

    def _observation(self) -> dict[str, Any]:
        image = np.zeros((16, 16, 3), np.uint8)
        top = 3 if self.row == 0 else 10
        left = 2 * self.column + 2
        image[top : top + 3, left : left + 2] = (255, 255, 255)
        image[top : top + 3, :1] = (0, 0, 255) if self.row else (0, 255, 0)
        return {"image": image, "instruction": INSTRUCTION}

    def _info(self, success: bool = False) -> dict[str, Any]:
        return {"instruction": INSTRUCTION, "task": "corridor", "success": success}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.row, self.column, self.t = 0, 0, 0
        return self._observation(), self._info()

    def step(self, action: Any):
        action = int(action)
        if action == RIGHT:
            self.column = min(self.column + 1, self.length - 1)
        elif action == UP:
            self.row = 0
        elif action == DOWN:
            self.row = 1
        self.t += 1
        success = self.row == 0 and self.column == self.length - 1
        if not success and self.row == 0 and self.np_random.random() < self.slip:
            self.row = 1
        truncated = not success and self.t >= 3 * self.length
        return self._observation(), float(success), success, truncated, self._info(success)


class CorridorExpert(Expert):
    """Climbs out of the ditch, otherwise walks right (reads the true state)."""

    name = "corridor_expert"

    def __init__(self, seed: int = 0) -> None:
        self.env: SlipCorridorEnv | None = None

    def reset(self, env: gym.Env, obs: dict[str, Any], info: dict[str, Any]) -> None:
        self.env = env.unwrapped

    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> int:
        return UP if self.env.row == 1 else RIGHT


if SLIP_ID not in gym.registry:
    gym.register(id=SLIP_ID, entry_point=SlipCorridorEnv, disable_env_checker=True)
