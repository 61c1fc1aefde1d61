"""minigrid's BabyAI bot as an instructcraft expert."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from minigrid.utils.baby_ai_bot import BabyAIBot, DisappearedBoxError

from envs.babyai import BabyAIInstructEnv
from envs.errors import WrongEnvError
from envs.experts.base import Expert, ExpertCannotLabel


def mission_objects(instruction: Any) -> Iterator[Any]:
    """The world objects a BabyAI instruction names (every match of each description), through
    sequences ("go to X, then pick up Y") and both objects of "put X next to Y"."""
    for name in ("instr_a", "instr_b"):
        if hasattr(instruction, name):
            yield from mission_objects(getattr(instruction, name))
    for name in ("desc", "desc_move", "desc_fixed"):
        description = getattr(instruction, name, None)
        if description is not None:
            yield from description.obj_set


class BabyAIExpert(Expert):
    """Wraps ``minigrid.utils.baby_ai_bot.BabyAIBot``, which plans from the level's true state.

    The bot refuses to go on once a box was opened (opening makes the box vanish, and the bot
    cannot tell whether the mission needed it). Here a box the mission does not name is only an
    obstacle gone: a new bot plans from the current state, keeping what the old one had seen. A
    box the mission names leaves nothing to do: ``act`` raises ``ExpertCannotLabel``.
    """

    name = "babyai_bot"

    def __init__(self, seed: int = 0) -> None:
        self._bot: BabyAIBot | None = None
        self._last_action: Any = None

    def reset(self, env: Any, obs: dict[str, Any], info: dict[str, Any]) -> None:
        base = env.unwrapped
        if not isinstance(base, BabyAIInstructEnv):
            raise WrongEnvError(f"BabyAIExpert needs an instructcraft BabyAI env, got {type(base).__name__}")
        self._bot = BabyAIBot(base.unwrapped_level)
        self._last_action = None

    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> int:
        if self._bot is None:
            raise RuntimeError("call reset(env, obs, info) before act()")
        try:
            action = self._bot.replan(self._last_action)
        except DisappearedBoxError:
            action = self._replan_without_box()
        except AssertionError as error:  # the bot's own way of saying a state is beyond it
            raise ExpertCannotLabel(
                f"minigrid's BabyAI bot found no plan: {error or 'assertion failed'}"
            ) from None
        self._last_action = action
        return int(action)

    def _replan_without_box(self) -> Any:
        """The action of a new bot for the state after a box was opened (see the class doc)."""
        assert self._bot is not None
        level = self._bot.mission
        opened = self._bot.prev_fwd_cell  # the box in front of the agent before the toggle
        if any(obj is opened for obj in mission_objects(level.unwrapped.instrs)):
            raise ExpertCannotLabel(
                f"a {opened.color} box that {level.unwrapped.mission!r} names was opened and is gone"
            )
        seen = self._bot.vis_mask
        self._bot = BabyAIBot(level)
        self._bot.vis_mask = seen.copy()
        try:
            return self._bot.replan(None)
        except (DisappearedBoxError, AssertionError) as error:
            raise ExpertCannotLabel(
                f"minigrid's BabyAI bot found no plan after a box was opened: {error}"
            ) from None

    def executed(self, action: Any) -> None:
        # The bot updates its plan from the action taken: the executed one, not its own label.
        self._last_action = action
