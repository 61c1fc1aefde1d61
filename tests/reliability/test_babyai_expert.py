"""The BabyAI expert labels any state a learner or label noise leads to: opening a box (which
minigrid's bot refuses to plan past) neither stops collection nor DAgger, and a state the expert
truly cannot label ends that episode, recorded with the reason, while the run goes on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from helpers import run_cli
from minigrid.core.actions import Actions

from envs.data.collect import record_episode
from envs.data.store import Dataset, DatasetWriter
from envs.experts import make_expert

GO_TO_RED_BALL = "instructcraft/BabyAI-GoToRedBall-v0"
PICKUP = "instructcraft/BabyAI-Pickup-v0"
REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


def index_entries(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / "index.jsonl").read_text().splitlines()]


def test_collect_with_noise_that_opens_a_box_records_the_episode(tmp_path: Path) -> None:
    # Seed 38 with 50% noise toggles a distractor box on its way to the red ball.
    out = tmp_path / "demos"
    args = ["collect", "--env", GO_TO_RED_BALL, "--episodes", "1", "--seed", "38", "--noise", "0.5"]
    run_cli(*args, "--workers", "1", "--out", str(out))
    (entry,) = index_entries(out)
    assert entry["seed"] == 38 and entry["success"] and "expert_stopped" not in entry["extra"]
    executed = entry["extra"]["executed_actions"]
    assert int(Actions.toggle) in executed
    labels = Dataset(out).episode(0).actions
    assert len(labels) == len(executed) and set(labels.tolist()) <= set(range(7))


def test_opening_the_box_the_mission_names_ends_the_episode_with_the_reason(tmp_path: Path) -> None:
    # Seed 1 asks to pick up the yellow box; the executed action opens it instead of picking it up.
    env = gym.make(PICKUP)
    expert = make_expert("babyai_bot")

    def open_instead_of_pick_up(label: Any, observation: dict[str, Any], info: dict[str, Any]) -> Any:
        level = env.unwrapped.unwrapped_level
        front = level.grid.get(*level.front_pos)
        facing_box = front is not None and front.type == "box"
        action = int(Actions.toggle) if label == int(Actions.pickup) and facing_box else label
        expert.executed(action)
        return action

    episode, executed = record_episode(
        env,
        expert.act,
        seed=1,
        task=None,
        env_id=PICKUP,
        expert=expert.name,
        on_reset=lambda observation, info: expert.reset(env, observation, info),
        execute=open_instead_of_pick_up,
    )
    assert episode.instruction == "pick up the yellow box"
    assert executed[-1] == int(Actions.toggle)
    assert not episode.success and episode.truncated[-1] and not episode.terminated.any()
    assert "yellow box" in episode.extra["expert_stopped"]
    assert len(episode.images) == episode.length + 1 == len(executed) + 1
    with DatasetWriter(
        tmp_path / "data", env_id=PICKUP, image_shape=(64, 64, 3), action_space=env.action_space
    ) as writer:
        writer.add(episode)
    (entry,) = index_entries(tmp_path / "data")
    assert entry["extra"]["expert_stopped"] == episode.extra["expert_stopped"]


def test_dagger_on_babyai_goes_on_when_the_learner_opens_a_box(tmp_path: Path) -> None:
    demos, out = tmp_path / "demos", tmp_path / "dagger"
    run_cli("collect", "--env", GO_TO_RED_BALL, "--episodes", "4", "--seed", "0", "--out", str(demos))
    args = ["dagger", "--config", TINY, "--set", "train.steps=5", "--data", str(demos)]
    args += ["--env", GO_TO_RED_BALL, "--out", str(out), "--rounds", "1", "--episodes", "8"]
    args += ["--beta", "0.5", "--steps-per-round", "5", "--eval-episodes", "0", "--workers", "1"]
    run_cli(*args)
    rollouts = [entry for entry in index_entries(out / "data") if "dagger_round" in entry.get("extra", {})]
    assert sorted(entry["seed"] for entry in rollouts) == list(range(4, 12))
    executed = [np.asarray(entry["extra"]["executed_actions"]) for entry in rollouts]
    assert any((actions == int(Actions.toggle)).any() for actions in executed)
    assert (out / "checkpoint" / "model.safetensors").exists()
