"""Evaluation promises: the Wilson 95% interval against known values, swapped and blank
instructions, and the sensitivity report built from runs on the same seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_config, run_cli

import envs
from agent import Agent
from agent.evaluate import evaluate, sensitivity, swapped_instruction, wilson_interval
from envs.crafter_tasks import TASKS
from policies import InstructionPolicy


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),
        (1, 10, 0.0179, 0.4042),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_known_values(successes: int, trials: int, low: float, high: float) -> None:
    assert wilson_interval(successes, trials) == pytest.approx((low, high), abs=1e-4)
    # The bounds are the roots in p of (p_hat - p)^2 = z^2 p (1 - p) / n.
    z, p_hat = 1.96, successes / trials
    roots = sorted(np.roots([1 + z * z / trials, -(2 * p_hat + z * z / trials), p_hat * p_hat]).real)
    assert wilson_interval(successes, trials) == pytest.approx((max(roots[0], 0), min(roots[1], 1)), abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_swapped_instruction_names_another_evaluated_task() -> None:
    pool = ("collect_wood", "eat_cow", "place_table")
    for seed in range(20):
        text = swapped_instruction(envs.CRAFTER_ID, "eat_cow", seed, pool)
        owners = [name for name in pool if text in TASKS[name].phrasings]
        assert owners and "eat_cow" not in owners, text
        assert swapped_instruction(envs.CRAFTER_ID, "eat_cow", seed, pool) == text  # deterministic
    alone = swapped_instruction(envs.CRAFTER_ID, "eat_cow", 0, ("eat_cow",))
    assert alone not in TASKS["eat_cow"].phrasings  # a pool of one: any other task
    level = envs.babyai_id("GoToLocal")
    import gymnasium as gym

    mission = gym.make(level).reset(seed=4)[1]["instruction"]
    assert swapped_instruction(level, "GoToLocal", 4) != mission


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = make_tiny_config().replace(**{"vision.image_size": [64, 64], "vision.channels": [8, 16, 16]})
    torch.manual_seed(0)
    return InstructionPolicy(config).save_pretrained(tmp_path_factory.mktemp("ckpt") / "policy")


def test_modes_give_the_agent_the_right_instruction(checkpoint: Path) -> None:
    """correct: the env's; swapped: another evaluated task's; blank: the learned null instruction."""
    tasks = ["collect_wood", "eat_cow"]
    kwargs = dict(tasks=tasks, seed=10, env_kwargs={"step_limit": 4})
    seen: dict[str, list[dict]] = {}
    states: dict[str, list[torch.Tensor]] = {}
    agent = Agent.from_pretrained(checkpoint)
    act = agent.act

    def recording_act(observation, *args, **kwargs):
        if agent._state is None or agent.step_count == 0:
            states.setdefault(mode, []).append(None)
        action = act(observation, *args, **kwargs)
        if states[mode][-1] is None:
            states[mode][-1] = agent._state.text.clone()
        return action

    agent.act = recording_act
    for mode in ("correct", "swapped", "blank"):
        rows: list[dict] = []
        evaluate(envs.CRAFTER_ID, 4, agent=agent, mode=mode, progress=rows.append, **kwargs)
        seen[mode] = rows
    for correct, swapped, blank in zip(seen["correct"], seen["swapped"], seen["blank"], strict=True):
        assert correct["seed"] == swapped["seed"] == blank["seed"] and correct["task"] == swapped["task"]
        assert correct["instruction"] in TASKS[correct["task"]].phrasings
        other = [name for name in tasks if swapped["instruction"] in TASKS[name].phrasings]
        assert other and other != [correct["task"]]
        assert blank["instruction"] == ""
    null = agent.policy.null_instruction.detach()
    for text in states["blank"]:
        torch.testing.assert_close(text[0], null)
    for text in states["correct"] + states["swapped"]:
        assert not torch.allclose(text[0], null)


def test_sensitivity_reports_the_gap_on_the_same_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.evaluate as evaluation

    rates = {"correct": {"a": 0.8, "b": 0.5}, "swapped": {"a": 0.2, "b": 0.5}, "blank": {"a": 0.1, "b": 0.0}}
    calls = []

    def fake(env_id, episodes, *, mode, **kwargs):
        calls.append((mode, kwargs["seed"]))
        return {"tasks": {task: {"success_rate": rate} for task, rate in rates[mode].items()}}

    monkeypatch.setattr(evaluation, "evaluate", fake)
    report = sensitivity(envs.CRAFTER_ID, 10, seed=7, checkpoint="x")
    assert calls == [("correct", 7), ("swapped", 7), ("blank", 7)]
    assert report["tasks"]["a"] == {
        "correct": 0.8,
        "swapped": 0.2,
        "blank": 0.1,
        "correct_minus_swapped": pytest.approx(0.6),
    }
    assert report["mean_correct_minus_swapped"] == pytest.approx(0.3)


@pytest.mark.slow
def test_eval_cli_instruction_mode_and_sensitivity(checkpoint: Path) -> None:
    common = ["eval", "--checkpoint", str(checkpoint), "--env", envs.CRAFTER_ID, "--episodes", "2",
              "--tasks", "collect_wood", "eat_cow", "--workers", "1", "--json"]  # fmt: skip
    blank = json.loads(run_cli(*common, "--instruction-mode", "blank").stdout)
    assert blank["mode"] == "blank" and blank["episodes"] == 2
    assert blank["ci95"] == pytest.approx(list(wilson_interval(round(blank["success_rate"] * 2), 2)))
    report = json.loads(run_cli(*common, "--sensitivity").stdout)
    assert set(report["runs"]) == {"correct", "swapped", "blank"}
    assert {run["seed"] for run in report["runs"].values()} == {report["runs"]["correct"]["seed"]}
    for task, row in report["tasks"].items():
        assert row["correct_minus_swapped"] == pytest.approx(row["correct"] - row["swapped"]), task
