"""What the shared episode loop hands its callers: the infos ``act`` and ``execute`` choose
from, a terminated episode's last step, the reset observation, and success only when an info
says so."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.episodes import Step, play_episode
from envs.spaces import observation_space


class GoalEnv(gym.Env):
    """Terminates on the step the actions sum to ``goal``. Each info carries the step count as
    ``t``; infos never carry ``success`` (an env without a success signal)."""

    def __init__(self, goal: int = 3) -> None:
        self.observation_space = observation_space(4, 4)
        self.action_space = spaces.Discrete(3)
        self.goal = goal

    def _observation(self) -> dict[str, Any]:
        image = np.zeros((4, 4, 3), np.uint8)
        image[0, 0, 0] = 10 + self.t
        return {"image": image, "instruction": "reach"}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t, self.total = 0, 0
        return self._observation(), {"t": 0}

    def step(self, action: Any):
        self.t += 1
        self.total += int(action)
        return self._observation(), 0.0, self.total >= self.goal, False, {"t": self.t}


def pixel(observation: dict[str, Any]) -> int:
    return int(observation["image"][0, 0, 0])


def test_act_and_execute_see_the_observation_and_info_the_action_is_chosen_from() -> None:
    """Protects: act and execute get the current observation and its info (the reset's first,
    then the last step's): an expert reads its state from info, DAgger's mixture both."""
    acted: list[tuple[int, int]] = []
    executed: list[tuple[int, int, int]] = []

    def act(observation: dict[str, Any], info: dict[str, Any]) -> int:
        acted.append((pixel(observation), info["t"]))
        return 1

    def execute(label: int, observation: dict[str, Any], info: dict[str, Any]) -> int:
        executed.append((label, pixel(observation), info["t"]))
        return label

    play_episode(GoalEnv(goal=3), act, execute=execute)
    assert acted == [(10, 0), (11, 1), (12, 2)]
    assert executed == [(1, 10, 0), (1, 11, 1), (1, 12, 2)]


def test_a_terminated_episode_ends_on_its_terminating_step() -> None:
    """Protects: the last Step says terminated (what the dataset stores as the episode's end),
    the earlier ones do not, and the loop stops there."""
    steps: list[Step] = []
    outcome = play_episode(GoalEnv(goal=2), lambda observation, info: 1, on_step=steps.append)
    assert [(step.terminated, step.truncated) for step in steps] == [(False, False), (True, False)]
    assert outcome.length == 2


def test_the_outcome_keeps_the_reset_observation_and_success_needs_an_info_saying_so() -> None:
    """Protects: Outcome.reset_observation is the frame the episode began with (eval's first
    video frame, collect's first image); an env whose infos carry no 'success' never succeeds."""
    outcome = play_episode(GoalEnv(goal=2), lambda observation, info: 1)
    assert pixel(outcome.reset_observation) == 10 and pixel(outcome.observation) == 12
    assert outcome.success is False
