"""minigrid's BabyAI bot as an instructcraft expert."""

from __future__ import annotations

from typing import Any

from minigrid.utils.baby_ai_bot import BabyAIBot

from envs.babyai import BabyAIInstructEnv
from envs.experts.base import Expert


class BabyAIExpert(Expert):
    """Wraps ``minigrid.utils.baby_ai_bot.BabyAIBot``, which plans from the level's true state."""

    name = "babyai_bot"

    def __init__(self, seed: int = 0) -> None:
        self._bot: BabyAIBot | None = None
        self._last_action: Any = None

    def reset(self, env: Any, obs: dict[str, Any], info: dict[str, Any]) -> None:
        base = env.unwrapped
        if not isinstance(base, BabyAIInstructEnv):
            raise TypeError(f"BabyAIExpert needs an instructcraft BabyAI env, got {type(base).__name__}")
        self._bot = BabyAIBot(base.unwrapped_level)
        self._last_action = None

    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> int:
        if self._bot is None:
            raise RuntimeError("call reset(env, obs, info) before act()")
        action = self._bot.replan(self._last_action)
        self._last_action = action
        return int(action)

    def executed(self, action: Any) -> None:
        # The bot updates its plan from the action taken: the executed one, not its own label.
        self._last_action = action
