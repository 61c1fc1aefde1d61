"""The expert interface: reset with the env, act from obs + info."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym


class Expert(ABC):
    """A demonstrator that may read the env's internal state (it is not a learner)."""

    name: str = "expert"

    @abstractmethod
    def reset(self, env: gym.Env, obs: dict[str, Any], info: dict[str, Any]) -> None:
        """Start an episode; ``env`` is the env just reset (wrappers allowed)."""

    @abstractmethod
    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> Any:
        """The action for the current step."""
