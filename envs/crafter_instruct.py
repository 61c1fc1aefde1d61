"""Crafter-Instruct: crafter's open world with one instructed achievement per episode.

crafter speaks the old gym API (``reset() -> obs``, ``step -> (obs, reward, done, info)``);
this adapter is the only place that sees it. It steps ``DeterministicCrafterEnv``, crafter with
a replayable world: an episode depends only on the seed and the actions, never on the process,
on memory layout, or on how often or at what size frames are rendered.
"""

from __future__ import annotations

from typing import Any

import crafter
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.crafter_determinism import DeterministicCrafterEnv
from envs.crafter_tasks import TASKS, resolve_tasks
from envs.errors import EnvSettingError, TaskError
from envs.spaces import check_instruction, observation_space

ACTION_NAMES: tuple[str, ...] = tuple(crafter.constants.actions)


OPEN_ENDED = "open_ended"
OPEN_ENDED_INSTRUCTION = "survive and unlock as many achievements as you can"
OPEN_ENDED_STEPS = 10_000


REWARD_MODES = ("task", "crafter", "task_health")
# Where noon and midnight fall in crafter's 300-step day, as fractions of it.
DAY_NOON, DAY_MIDNIGHT = 0.2, 0.7


class CrafterInstructEnv(gym.Env):
    """Crafter with a text instruction naming the achievement to unlock.

    Args:
        task: a task name, a list of names to sample from per episode, or None for all tasks.
        instruction: fixed text replacing the sampled phrasing (the task still decides success).
        phrasing: index of the phrasing to use for every episode instead of sampling one.
        reward_mode: "task" (1.0 on the step the instructed achievement unlocks), "crafter"
            (crafter's own reward: +1 per first unlock of any achievement, +-0.1 per health point)
            or "task_health" (the task's 1.0 plus crafter's +-0.1 per health point: staying alive
            pays on the way to the instructed achievement, other achievements do not).
        step_limit: steps before ``truncated``; None uses each task's own limit.
        size: observation size (H, W).
        render_size: size of ``render()`` frames; defaults to ``size``.
        area, view: crafter world and local view sizes.
        open_ended: the open-ended Crafter game instead of a task: one instruction
            (``OPEN_ENDED_INSTRUCTION`` unless ``instruction`` is given), crafter's own reward,
            episodes end at death or after ``step_limit`` (default 10000, crafter's length);
            ``info["success"]`` stays False and ``info["task"]`` is "open_ended". The Crafter
            score is computed from ``info["achievements"]`` at episode end.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012  (gymnasium convention)
    action_names: tuple[str, ...] = ACTION_NAMES

    def __init__(
        self,
        task: str | list[str] | tuple[str, ...] | None = None,
        instruction: str | None = None,
        phrasing: int | None = None,
        reward_mode: str = "task",
        step_limit: int | None = None,
        size: tuple[int, int] = (64, 64),
        render_size: tuple[int, int] | None = None,
        area: tuple[int, int] = (64, 64),
        view: tuple[int, int] = (9, 9),
        render_mode: str | None = "rgb_array",
        open_ended: bool = False,
    ) -> None:
        if reward_mode not in REWARD_MODES:
            raise EnvSettingError(
                f"reward_mode must be one of {', '.join(REWARD_MODES)}, got {reward_mode!r}"
            )
        # bool is an int subclass and a float limit would silently round: both are refused.
        if step_limit is not None and (
            isinstance(step_limit, bool) or not isinstance(step_limit, (int, np.integer)) or step_limit < 1
        ):
            raise EnvSettingError(f"step_limit must be a positive integer, got {step_limit!r}")
        if render_mode not in (None, "rgb_array"):
            raise EnvSettingError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        if open_ended and task is not None:
            raise TaskError("open_ended=True plays the whole game: leave task=None")
        self.open_ended = open_ended
        self.tasks = resolve_tasks(task)
        if phrasing is not None:
            for name in self.tasks:
                if not 0 <= phrasing < len(TASKS[name].phrasings):
                    raise TaskError(
                        f"phrasing {phrasing} out of range for task {name!r} "
                        f"({len(TASKS[name].phrasings)} phrasings)"
                    )
        self.fixed_instruction = None if instruction is None else check_instruction(instruction)
        self.phrasing = phrasing
        self.reward_mode = "crafter" if open_ended else reward_mode
        self.step_limit = (
            int(step_limit) if step_limit is not None else (OPEN_ENDED_STEPS if open_ended else None)
        )
        self.render_mode = render_mode
        self.size = tuple(size)
        self.render_size = tuple(render_size) if render_size is not None else self.size
        # length=None: the adapter owns truncation; crafter's reward=True keeps its reward in info.
        self._env = DeterministicCrafterEnv(
            area=area, view=view, size=self.size, reward=True, length=None, seed=0
        )
        self.observation_space = observation_space(*self.size)
        self.action_space = spaces.Discrete(len(ACTION_NAMES))
        self.task: str = self.tasks[0]
        self.instruction: str = ""
        self.world_seed: int = 0
        self._achievement = TASKS[self.task].achievement
        self._limit = 0
        self._last_health = 0  # crafter's health at the previous step (task_health reward)
        self._steps = 0
        self._frame: np.ndarray | None = None

    # -- state the experts read -------------------------------------------------------------
    @property
    def world(self) -> Any:
        """crafter's ``engine.World`` (materials, objects); for scripted experts."""
        return self._env._world

    @property
    def player(self) -> Any:
        """crafter's ``objects.Player`` (pos, facing, inventory, achievements)."""
        return self._env._player

    @property
    def daylight(self) -> float:
        """crafter's daylight, 0 (midnight) to 1 (noon): how dark it draws the whole frame."""
        return round(float(self._env._world.daylight), 3)

    @property
    def dawn(self) -> bool:
        """Whether crafter's daylight is rising (midnight to noon) rather than falling. Its day
        is 300 steps: noon at step 60, midnight at 210 (``crafter.Env._update_time``)."""
        phase = (self._env._step / 300) % 1
        return phase >= DAY_MIDNIGHT or phase < DAY_NOON

    # -- gymnasium API ----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        # The world seed is drawn first so that one seed gives the same world for every task.
        self.world_seed = int(self.np_random.integers(2**31 - 1))
        task = options.get("task")
        if self.open_ended:
            self.task = OPEN_ENDED
            self._achievement = None
            self._limit = self.step_limit
            self.instruction = check_instruction(
                options.get("instruction") or self.fixed_instruction or OPEN_ENDED_INSTRUCTION
            )
            return self._reset_world()
        if task is None:
            task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        elif task not in TASKS:
            raise TaskError(f"unknown Crafter-Instruct task {task!r}; known tasks: {sorted(TASKS)}")
        self.task = task
        spec = TASKS[task]
        self._achievement = spec.achievement
        self._limit = self.step_limit or spec.step_limit
        if options.get("instruction") is not None:
            self.instruction = check_instruction(options["instruction"])
        elif self.fixed_instruction is not None:
            self.instruction = self.fixed_instruction
        else:
            index = self.phrasing
            if index is None:
                index = int(self.np_random.integers(len(spec.phrasings)))
            self.instruction = spec.phrasings[index]
        return self._reset_world()

    def _reset_world(self) -> tuple[dict[str, Any], dict[str, Any]]:
        self._env._seed = self.world_seed
        self._env._episode = 0
        self._frame = self._env.reset()
        self._steps = 0
        self._last_health = int(self._env._player.health)
        info = {
            "instruction": self.instruction,
            "task": self.task,
            "success": False,
            "achievements": dict(self._env._player.achievements),
            "inventory": dict(self._env._player.inventory),
            "daylight": self.daylight,
            "dead": False,
            "world_seed": self.world_seed,
        }  # the same keys as step's: recorders such as Minari's DataCollector require it
        return {"image": self._frame, "instruction": self.instruction}, info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.action_space.n}), got {action!r}")
        before = self._env._player.achievements[self._achievement] if self._achievement else 1
        frame, crafter_reward, dead, crafter_info = self._env.step(int(action))
        self._frame = frame
        self._steps += 1
        achievements = crafter_info["achievements"]
        success = before == 0 and achievements[self._achievement] > 0
        if self.reward_mode == "crafter":
            reward = float(crafter_reward)
        else:
            reward = 1.0 if success else 0.0
            if self.reward_mode == "task_health":
                # crafter's own health term, (health now - health before) / 10
                health = int(self._env._player.health)
                reward += (health - self._last_health) / 10.0
                self._last_health = health
        terminated = bool(success or dead)
        truncated = not terminated and self._steps >= self._limit
        info = {
            "instruction": self.instruction,
            "task": self.task,
            "success": success,
            "achievements": achievements,
            "inventory": crafter_info["inventory"],
            "daylight": self.daylight,
            "dead": bool(dead),
            "world_seed": self.world_seed,
        }
        return {"image": frame, "instruction": self.instruction}, reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        if self._frame is None:
            raise RuntimeError("call reset() before render()")
        if self.render_size == self.size:
            return self._frame
        return self._env.render(self.render_size)
