"""A tiny instruction-following env for CI-sized RL tests: the instruction alone decides the
rewarded action (the frames are noise), so only an agent that reads it beats chance (1/4)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.spaces import observation_space

SIGNAL_ID = "test/Signal-v0"
INSTRUCTIONS = [
    "press the red button",
    "press the green button",
    "press the blue button",
    "press the gray button",
]


class SignalEnv(gym.Env):
    """16x16 noise frames, Discrete(4); each of ``length`` steps pays 1 for the named action.
    ``info["success"]`` at the end: every step was right."""

    def __init__(self, length: int = 4) -> None:
        self.observation_space = observation_space(16, 16)
        self.action_space = spaces.Discrete(len(INSTRUCTIONS))
        self.length = length

    def _observation(self) -> dict[str, Any]:
        image = self.np_random.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        return {"image": image, "instruction": INSTRUCTIONS[self.target]}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.target = int(self.np_random.integers(len(INSTRUCTIONS)))
        self.t = 0
        self.correct = 0
        return self._observation(), {
            "instruction": INSTRUCTIONS[self.target],
            "task": "signal",
            "success": False,
        }

    def step(self, action: Any):
        right = int(action) == self.target
        self.correct += right
        self.t += 1
        done = self.t >= self.length
        info = {
            "instruction": INSTRUCTIONS[self.target],
            "task": f"signal-{self.target}",
            "success": done and self.correct == self.length,
        }
        return self._observation(), float(right), done, False, info


if SIGNAL_ID not in gym.registry:
    gym.register(id=SIGNAL_ID, entry_point=SignalEnv, disable_env_checker=True)
