"""Evaluation of phrasings the agent never saw, and which task judges a free instruction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_config, run_cli

import envs
from agent.evaluate import evaluate_phrasings, read_phrasings
from agent.rollout import judging_task
from policies import InstructionPolicy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = make_tiny_config().replace(
        **{"vision.image_size": [64, 64], "vision.channels": [8, 16, 16], "fusion_kwargs.max_history": 8}
    )
    torch.manual_seed(0)
    return InstructionPolicy(config).save_pretrained(tmp_path_factory.mktemp("ckpt") / "checkpoint")


def test_each_phrasing_is_judged_by_its_task_on_the_trained_seeds(checkpoint: Path) -> None:
    phrasings = {"collect_sapling": ["grab a young sapling"], "place_plant": ["grow a plant", "plant it"]}
    result = evaluate_phrasings(
        envs.CRAFTER_ID, phrasings, 3, checkpoint=str(checkpoint), seed=40, env_kwargs={"step_limit": 4}
    )
    rows = result["episodes"]
    assert len(rows) == 3 * (1 + 1) + 3 * (1 + 2)
    for task, texts in phrasings.items():
        trained = [r for r in rows if r["task"] == task and r["mode"] == "correct"]
        assert [r["seed"] for r in trained] == [40, 41, 42]
        assert all(r["instruction"] not in texts for r in trained)
        for text in texts:
            new = [r for r in rows if r["instruction"] == text]
            assert {r["task"] for r in new} == {task} and [r["seed"] for r in new] == [40, 41, 42]
            rate = sum(r["success"] for r in new) / 3
            assert result["tasks"][task]["phrasings"][text]["success_rate"] == pytest.approx(rate)
        assert result["tasks"][task]["trained"] == pytest.approx(sum(r["success"] for r in trained) / 3)


def test_phrasings_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"fly_away": ["take off"]}))
    with pytest.raises(ValueError, match="fly_away"):
        read_phrasings(str(path), envs.CRAFTER_ID)
    path.write_text(json.dumps({"collect_wood": []}))
    with pytest.raises(ValueError, match="non-empty list"):
        read_phrasings(str(path), envs.CRAFTER_ID)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read phrasings"):
        read_phrasings(str(path), envs.CRAFTER_ID)


def test_a_known_phrasing_selects_its_task_and_a_free_one_is_flagged() -> None:
    assert judging_task(envs.CRAFTER_ID, "Chop down  a tree", None)[0] == "collect_wood"
    task, line = judging_task(envs.CRAFTER_ID, "dance around", None)
    assert task is None and "--task" in line
    assert judging_task(envs.CRAFTER_ID, "dance around", "eat_cow")[0] == "eat_cow"
    with pytest.raises(ValueError, match="unknown task"):
        judging_task(envs.CRAFTER_ID, None, "eat_cows")


@pytest.mark.slow
def test_eval_phrasings_cli(checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"collect_wood": ["cut some wood off a tree"]}))
    result = run_cli(
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--env",
        envs.CRAFTER_ID,
        "--episodes",
        "2",
        "--phrasings",
        str(path),
        "--workers",
        "1",
        "--json",
    )
    summary = json.loads(result.stdout)
    assert set(summary["tasks"]) == {"collect_wood"} and len(summary["episodes"]) == 4
    out = run_cli(
        "rollout",
        "--checkpoint",
        str(checkpoint),
        "--env",
        envs.CRAFTER_ID,
        "--instruction",
        "chop down a tree",
        "--out",
        str(tmp_path / "roll"),
        "--json",
    )
    assert "judged by task collect_wood" in out.stdout
    assert json.loads((tmp_path / "roll" / "stats.json").read_text())["episodes"][0]["task"] == "collect_wood"
