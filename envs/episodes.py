"""The episode loop every caller shares: reset, act, step, track the return and success.

Collection (an expert acting), evaluation, captioned rollouts, attention capture and DAgger's
mixture rollouts differ only in who acts and what they keep per step. They all call
``play_episode`` with an ``act(observation, info) -> action`` callable and hooks:

- ``on_reset(observation, info)`` runs once after ``env.reset`` (reset the expert or the agent,
  choose the instruction, render the first frame);
- ``execute(action, observation, info)`` replaces the action that runs (DART label noise,
  DAgger's expert/learner mixture); what ``act`` returned stays the step's ``label``;
- ``on_step(step)`` sees every ``Step`` after ``env.step`` (record frames, labels, video).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

Act = Callable[[dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class Step:
    """One step of an episode, as ``on_step`` sees it."""

    index: int  # actions taken so far, this one included (1 for the first)
    observation: dict[str, Any]  # what the action was chosen from
    label: Any  # what ``act`` returned
    action: Any  # what ran (``label`` unless ``execute`` replaced it)
    next_observation: dict[str, Any]
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    total_reward: float  # the return so far, this step's reward included
    success: bool  # any info so far said success, this step's included


@dataclass(frozen=True)
class Outcome:
    """How an episode went: the reset's and the last step's observation and info, the number
    of steps, the return and whether any step's info said ``success``."""

    reset_observation: dict[str, Any]
    reset_info: dict[str, Any]
    observation: dict[str, Any]
    info: dict[str, Any]
    length: int
    total_reward: float
    success: bool


def task_options(task: str | None) -> dict[str, Any] | None:
    """The ``reset`` options that choose ``task`` (None: the env draws one)."""
    return {"task": task} if task is not None else None


def play_episode(
    env: gym.Env,
    act: Act,
    *,
    seed: int | None = None,
    task: str | None = None,
    on_reset: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    execute: Callable[[Any, dict[str, Any], dict[str, Any]], Any] | None = None,
    on_step: Callable[[Step], None] | None = None,
    max_steps: int | None = None,
) -> Outcome:
    """Reset ``env`` (``seed``, and ``task`` for envs with a task choice) and step it with
    ``act`` until the episode terminates, is truncated or has taken ``max_steps`` actions."""
    observation, info = env.reset(seed=seed, options=task_options(task))
    reset_observation, reset_info = observation, info
    if on_reset is not None:
        on_reset(observation, info)
    steps, total, success = 0, 0.0, False
    while True:
        label = act(observation, info)
        action = label if execute is None else execute(label, observation, info)
        previous = observation
        observation, reward, terminated, truncated, info = env.step(action)
        steps += 1
        total += float(reward)
        success = success or bool(info.get("success", False))
        if on_step is not None:
            on_step(
                Step(
                    steps,
                    previous,
                    label,
                    action,
                    observation,
                    reward,
                    terminated,
                    truncated,
                    info,
                    total,
                    success,
                )
            )
        if terminated or truncated or (max_steps is not None and steps >= max_steps):
            break
    return Outcome(reset_observation, reset_info, observation, info, steps, total, success)
