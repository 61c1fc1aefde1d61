"""The shared episode loop (envs.episodes.play_episode) and the dataset recording built on it."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.data.collect import record_episode
from envs.episodes import Step, play_episode
from envs.spaces import observation_space


class CountingEnv(gym.Env):
    """Each step's reward is the action; success once the rewards reach ``goal``; ends after
    ``limit`` steps. The image's first pixel holds the step count."""

    def __init__(self, goal: int = 5, limit: int = 6) -> None:
        self.observation_space = observation_space(4, 4)
        self.action_space = spaces.Discrete(3)
        self.goal, self.limit = goal, limit
        self.resets: list[tuple[int | None, dict[str, Any] | None]] = []

    def _observation(self) -> dict[str, Any]:
        image = np.zeros((4, 4, 3), np.uint8)
        image[0, 0, 0] = self.t
        return {"image": image, "instruction": "count"}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.resets.append((seed, options))
        self.t, self.total = 0, 0
        return self._observation(), {"instruction": "count", "task": (options or {}).get("task", "drawn")}

    def step(self, action: Any):
        self.t += 1
        self.total += int(action)
        info = {"instruction": "count", "task": "counted", "success": self.total >= self.goal}
        return self._observation(), float(action), False, self.t >= self.limit, info


def test_the_loop_resets_acts_steps_and_tracks_return_and_success() -> None:
    env = CountingEnv()
    seen: list[tuple[str, Any]] = []
    steps: list[Step] = []

    def act(observation: dict[str, Any], info: dict[str, Any]) -> int:
        seen.append(("act", int(observation["image"][0, 0, 0])))
        return 2

    outcome = play_episode(
        env,
        act,
        seed=7,
        task="count_up",
        on_reset=lambda observation, info: seen.append(("reset", info["task"])),
        on_step=steps.append,
    )
    assert env.resets == [(7, {"task": "count_up"})]
    assert seen == [("reset", "count_up"), *(("act", t) for t in range(6))]
    assert [step.index for step in steps] == [1, 2, 3, 4, 5, 6]
    assert [step.total_reward for step in steps] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert [step.success for step in steps] == [False, False, True, True, True, True]
    assert [int(step.observation["image"][0, 0, 0]) for step in steps] == [0, 1, 2, 3, 4, 5]
    assert [int(step.next_observation["image"][0, 0, 0]) for step in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[-1].truncated and not steps[-1].terminated
    assert (outcome.length, outcome.total_reward, outcome.success) == (6, 12.0, True)
    assert outcome.reset_info["task"] == "count_up" and outcome.info["task"] == "counted"
    assert int(outcome.observation["image"][0, 0, 0]) == 6


def test_success_is_kept_once_seen_and_no_task_lets_the_env_draw() -> None:
    env = CountingEnv(goal=1)
    actions = iter([1, 0, 0, 0, 0, 0])
    outcome = play_episode(env, lambda observation, info: next(actions), seed=None)
    assert env.resets == [(None, None)]
    assert outcome.reset_info["task"] == "drawn"
    assert outcome.success and outcome.total_reward == 1.0  # later steps' infos say False


def test_execute_replaces_what_runs_and_the_label_stays() -> None:
    env = CountingEnv(goal=7)  # the labels would reach it, what runs does not
    steps: list[Step] = []
    outcome = play_episode(
        env,
        lambda observation, info: 2,
        execute=lambda label, observation, info: label - 1,
        on_step=steps.append,
    )
    assert [(step.label, step.action) for step in steps] == [(2, 1)] * 6
    assert outcome.total_reward == 6.0 and not outcome.success


def test_max_steps_ends_the_episode_early() -> None:
    steps: list[Step] = []
    outcome = play_episode(CountingEnv(), lambda observation, info: 0, max_steps=2, on_step=steps.append)
    assert outcome.length == 2 and len(steps) == 2
    assert not (steps[-1].terminated or steps[-1].truncated)


def test_record_episode_keeps_every_image_the_labels_and_what_ran() -> None:
    env = CountingEnv()
    starts: list[str] = []
    episode, executed = record_episode(
        env,
        lambda observation, info: 2,
        seed=3,
        task="count_up",
        env_id="test/Counting",
        expert="twos",
        on_reset=lambda observation, info: starts.append(info["task"]),
        execute=lambda label, observation, info: 1,
    )
    assert starts == ["count_up"]
    assert episode.length == 6 and len(episode.images) == 7
    assert episode.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert episode.actions.tolist() == [2] * 6 and episode.actions.dtype == np.int64
    assert executed == [1] * 6
    assert episode.rewards.tolist() == [1.0] * 6 and episode.rewards.dtype == np.float32
    assert episode.truncated.tolist() == [False] * 5 + [True] and not episode.terminated.any()
    assert (episode.task, episode.instruction, episode.seed, episode.expert) == (
        "counted",
        "count",
        3,
        "twos",
    )
    assert episode.env_id == "test/Counting" and episode.success and episode.extra == {}
