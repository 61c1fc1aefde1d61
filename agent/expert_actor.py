"""An expert acting where a trained agent would, so ``eval`` can measure the expert itself.

``eval --expert crafter_planner`` runs the same episodes, seeds, instruction modes and plans as
an evaluation of a checkpoint, with the planner choosing the actions. Told a swapped
instruction, the expert pursues that instruction's task while the env judges its own: the
expert's correct - swapped gap is the most a learner's can be on the same seeds (on the tech
tree one task's route unlocks another's achievement, so it is below 1). Following a plan, it
plays the open-ended game the way a perfect instruction follower would: the plan's own score.

Only what an ``Agent`` offers ``agent.evaluate.run_episode`` is here: ``reset`` (an
instruction or a plan), ``seed_episode``, ``acting`` and ``observe``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym

from agent.errors import AgentSettingError
from agent.plan import Plan, PlanFollower
from envs.crafter_tasks import task_of_phrasing
from envs.errors import EnvsError, EnvSettingError
from envs.experts import Expert, make_expert
from envs.experts.base import ExpertCannotLabel


def _make(name: str, seed: int = 0) -> Expert:
    """``envs.experts.make_expert``, its refusal of an unknown name raised as this package's."""
    try:
        return make_expert(name, seed=seed)
    except EnvSettingError as error:
        raise AgentSettingError(str(error)) from None


def check_expert_follows(name: str, why: str) -> None:
    """Refuse (before any episode) an expert that cannot be told another task than its env's."""
    expert = _make(name)
    try:
        expert.follow(None)
    except EnvSettingError as error:
        raise AgentSettingError(f"{why}: {error}") from None


class ExpertActor:
    """``expert`` (a name in ``envs.experts.EXPERTS``) acting in ``env`` through the agent's
    episode interface. Each episode builds the expert anew, seeded with the episode's seed
    (``seed_episode``), so an episode's actions do not depend on which worker ran it or what it
    ran before. A state the expert has no action for (``ExpertCannotLabel``) is waited out with
    the env's first action (crafter's noop) until the world or the instruction changes."""

    def __init__(self, expert: str, env: gym.Env) -> None:
        self.expert: Expert = _make(expert)
        self.name = expert
        self.env = env
        self.plan: PlanFollower | None = None
        self.instruction: str | None = None
        self.stuck_steps = 0  # steps waited out in this episode
        self._started = False  # the expert has seen this episode's first observation

    def reset(
        self,
        instruction: str | None = None,
        truncate: bool = False,
        *,
        plan: Plan | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        if plan is not None:
            if instruction is not None:
                raise AgentSettingError("pass an instruction or a plan, not both")
            self.plan = PlanFollower(plan)
            instruction = self.plan.start(info or {})
        else:
            self.plan = None
        if instruction is None:
            raise AgentSettingError(
                "an expert has no behaviour without an instruction: evaluate it with the correct "
                "or a swapped instruction, or a plan (not --instruction-mode blank)"
            )
        self.instruction = instruction
        self.stuck_steps = 0
        self._started = False

    def check_env(self, env: gym.Env) -> None:
        """Refuse, before any episode, an env the expert cannot act in (the crafter planner on a
        BabyAI level): the expert is reset on ``env``'s first observation."""
        observation, info = env.reset(seed=0)
        try:
            _make(self.name).reset(env, observation, info)
        except EnvsError as error:
            raise AgentSettingError(f"the {self.name} expert cannot act in this env: {error}") from None

    def seed_episode(self, seed: int) -> None:
        self.expert = _make(self.name, seed)

    def check_plan(self, plan: Plan) -> None:
        """Nothing to check: a plan names a task for every step and rule when it is read, and an
        expert reads no text (an agent checks the instructions' lengths here)."""

    def observe(self, info: dict[str, Any]) -> str | None:
        if self.plan is not None:
            instruction = self.plan.observe(info)
            if instruction != self.instruction:
                self.instruction = instruction
                self.expert.follow(self.plan.current_task)
        return self.instruction

    def _task_told(self, info: dict[str, Any]) -> str | None:
        """The task to follow: the plan's, the one the instruction names, or None (the env's
        own, when the instruction is the env's)."""
        if self.plan is not None:
            return self.plan.current_task
        if self.instruction == info.get("instruction"):
            return None
        task = task_of_phrasing(self.instruction or "")
        if task is None:
            raise AgentSettingError(
                f"the expert cannot be told {self.instruction!r}: it is no phrasing of a known task"
            )
        return task

    def acting(self, deterministic: bool = False, cfg_scale: float = 0.0) -> Callable[[Any, Any], Any]:
        """The expert's action for each observation (it is deterministic given the episode's seed;
        the sampling arguments are the agent's and change nothing here)."""

        def act(observation: dict[str, Any], info: dict[str, Any]) -> Any:
            if not self._started:
                self.expert.reset(self.env, observation, info)
                task = self._task_told(info)
                if task is not None:
                    self.expert.follow(task)
                self._started = True
            try:
                return self.expert.act(observation, info)
            except ExpertCannotLabel:
                self.stuck_steps += 1
                return 0

        return act
