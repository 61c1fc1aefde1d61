"""Shipped agents: ``pretrained:<name>`` loads a checkpoint that ships with the package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

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


def test_the_shipped_agent_loads_acts_and_says_how_it_was_trained() -> None:
    import gymnasium as gym

    import envs

    assert "crafter-all" in available()
    folder = Path(resolve_checkpoint("pretrained:crafter-all"))
    shipped = sorted(p.name for p in folder.iterdir())
    assert shipped == ["card.json", "config.json", "model.safetensors"]  # no optimizer state
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 5 * 2**20
    card = json.loads((folder / "card.json").read_text())
    assert {"trained_with", "evaluation", "tasks"} <= set(card)
    assert len(card["evaluation"]["per_task"]) == 22
    agent = Agent.from_pretrained("pretrained:crafter-all")
    env = gym.make(envs.CRAFTER_ID, task="collect_wood")
    observation, info = env.reset(seed=100_000)
    agent.reset(info["instruction"])
    actions = [agent.act(observation, deterministic=True) for _ in range(3)]
    assert all(0 <= int(a) < env.action_space.n for a in actions)


def test_eval_takes_the_shipped_agent_by_name() -> None:
    result = run_cli(
        "eval",
        "--checkpoint",
        "pretrained:crafter-all",
        "--env",
        "instructcraft/Crafter-Instruct-v0",
        "--tasks",
        "collect_wood",
        "--episodes",
        "1",
        "--workers",
        "1",
        "--json",
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["episodes"] == 1
