"""Open-ended Crafter evaluation: per-episode results in crafter's stats.jsonl format that
crafter's score formula reads back to the score eval reports, and the modes it refuses."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_config

import envs
from agent.evaluate import evaluate
from envs.crafter_score import ACHIEVEMENTS, read_stats
from policies import InstructionPolicy
from train.cli.inspection import _write_results

OPEN_ENDED = "instructcraft/Crafter-OpenEnded-v0"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = make_tiny_config().replace(**{"vision.image_size": [64, 64], "vision.channels": [8, 16]})
    torch.manual_seed(0)
    return InstructionPolicy(config).save_pretrained(tmp_path_factory.mktemp("ckpt") / "checkpoint")


def crafter_score_from_stats(path: Path) -> float:
    """crafter's analysis, re-implemented from its definition: per achievement the percentage of
    episodes with a count >= 1, then exp(mean ln(1 + s)) - 1."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    rates = [
        100 * sum(line[f"achievement_{name}"] >= 1 for line in lines) / len(lines) for name in ACHIEVEMENTS
    ]
    return math.exp(sum(math.log(1 + rate) for rate in rates) / len(rates)) - 1


def test_stats_jsonl_gives_back_the_score_eval_reports(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = evaluate(
        OPEN_ENDED, 3, checkpoint=str(checkpoint), seed=5, env_kwargs={"step_limit": 60}, workers=1
    )
    assert [row["seed"] for row in result["per_episode"]] == [5, 6, 7]
    assert all(set(row["achievement_counts"]) == set(ACHIEVEMENTS) for row in result["per_episode"])
    _write_results(str(tmp_path / "out"), result)
    assert capsys.readouterr().out == ""  # `eval --out --json`: stdout holds only the JSON
    records = read_stats(tmp_path / "out" / "stats.jsonl")
    assert [r["length"] for r in records] == [row["length"] for row in result["per_episode"]]
    assert crafter_score_from_stats(tmp_path / "out" / "stats.jsonl") == pytest.approx(
        result["crafter_score"]
    )
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["crafter_score"] == pytest.approx(result["crafter_score"])


def test_swapped_instructions_on_the_open_ended_game_are_refused(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="one instruction for every episode"):
        evaluate(OPEN_ENDED, 2, checkpoint=str(checkpoint), mode="swapped")


def test_a_plan_cannot_be_combined_with_another_instruction_mode(checkpoint: Path) -> None:
    from agent.plan import Plan

    with pytest.raises(ValueError, match="a plan gives the agent its instructions"):
        evaluate(
            envs.CRAFTER_ID, 1, checkpoint=str(checkpoint), mode="blank", plan=Plan.parse("collect wood")
        )
    from train.cli.inspection import _read_plan

    args = argparse.Namespace(
        plan="collect wood", sensitivity=True, phrasings=None, instruction_mode="correct"
    )
    with pytest.raises(ValueError, match="drop --sensitivity"):
        _read_plan(args)
