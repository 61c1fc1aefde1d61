"""Shipped agents: ``pretrained:<name>`` loads a checkpoint that ships with the package."""

from __future__ import annotations

import pytest

from agent import Agent
from agent.pretrained import available, resolve_checkpoint


def test_paths_pass_through_and_unknown_names_list_the_shipped_ones(tmp_path) -> None:
    assert resolve_checkpoint(tmp_path) == tmp_path
    assert resolve_checkpoint("runs/bc/checkpoint") == "runs/bc/checkpoint"
    with pytest.raises(ValueError, match=r"no shipped agent 'nope'; shipped: "):
        resolve_checkpoint("pretrained:nope")
    with pytest.raises(ValueError, match="no shipped agent"):
        Agent.from_pretrained("pretrained:nope")
    assert all(resolve_checkpoint(f"pretrained:{name}").endswith(name) for name in available())
