"""Agent.reset never cuts an instruction short in silence: it raises, or (truncate=True) warns
once and records it, as the env wrapper TokenizeInstruction does for its own limit."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import make_tiny_config

from agent import Agent
from policies import InstructionPolicy

SHORT = "collect wood"
LONG = "collect wood and then place a table next to the water actually drink water instead"  # 15 words


@pytest.fixture
def agent() -> Agent:
    config = make_tiny_config().replace(**{"text.max_tokens": 8})
    torch.manual_seed(0)
    return Agent(InstructionPolicy(config))


def test_a_long_instruction_raises_naming_the_limit(agent: Agent) -> None:
    agent.reset(SHORT)
    with pytest.raises(ValueError, match=r"has 15 tokens, more than the text encoder's max_tokens=8"):
        agent.reset(LONG)


def test_a_long_instruction_in_the_observation_raises_too(agent: Agent) -> None:
    agent.reset(None)
    image = torch.zeros(16, 16, 3, dtype=torch.uint8).numpy()
    with pytest.raises(ValueError, match="max_tokens=8"):
        agent.act({"image": image, "instruction": LONG})


def test_truncate_warns_once_and_records(agent: Agent) -> None:
    with pytest.warns(UserWarning, match="reads only the first 8"):
        agent.reset(LONG, truncate=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agent.reset(LONG, truncate=True)  # the same instruction again: no second warning
        agent.reset(SHORT, truncate=True)
    assert agent.truncated_instructions == [LONG]
