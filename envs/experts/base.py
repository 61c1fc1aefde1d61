"""The expert interface: reset with the env, act from obs + info."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym

from envs.errors import EnvsError, EnvSettingError


class ExpertCannotLabel(EnvsError, RuntimeError):
    """The expert has no action for the current state (the message says why). Recording ends the
    episode there, marks its last step truncated and keeps the reason in the episode's ``extra``;
    a run that records many episodes goes on with the next one."""


class Expert(ABC):
    """A demonstrator that may read the env's internal state (it is not a learner)."""

    name: str = "expert"

    @abstractmethod
    def reset(self, env: gym.Env, obs: dict[str, Any], info: dict[str, Any]) -> None:
        """Start an episode; ``env`` is the env just reset (wrappers allowed)."""

    @abstractmethod
    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> Any:
        """The action for the current step; raises ``ExpertCannotLabel`` for a state it has no
        action for."""

    def follow(self, task: str | None) -> None:
        """Label ``task`` from the next ``act`` on instead of the env's own (None: the env's again);
        a rollout that follows a plan of instructions changes the task mid-episode. Experts that
        can only solve their env's task refuse."""
        raise EnvSettingError(
            f"the {self.name} expert labels only its env's own task and cannot be told another: "
            "plan-following rollouts need one that can (crafter_planner, crafter_night_planner, crafter_view_planner)"
        )

    def executed(self, action: Any) -> None:  # noqa: B027  (optional hook, no-op by default)
        """Told the action the env actually ran this step when it was not necessarily this
        expert's (label noise, DAgger). Experts that plan from the true state each step ignore
        it; one that keeps a plan (the BabyAI bot) must update it from what really happened."""
