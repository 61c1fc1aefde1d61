"""A closed stdout pipe, the rl section of a BC run's run.json, the agent's logits in public."""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_config, run_cli

import envs
import train.cli as cli
from agent import Agent
from envs.data.collect import collect
from policies import InstructionPolicy
from train.config import RLConfig

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


def run_into_closed_pipe(*args: str, buffered: bool) -> subprocess.CompletedProcess[str]:
    """``python -m train.cli ARGS`` writing into a pipe whose reader has already gone."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "train.cli", *args], stdout=write, stderr=subprocess.PIPE, text=True,
            env=env, cwd=REPO, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)


@pytest.mark.parametrize("buffered", [False, True])
def test_a_reader_that_went_away_ends_the_cli_quietly(buffered: bool) -> None:
    result = run_into_closed_pipe("envs", buffered=buffered)
    assert (result.returncode, result.stderr) == (0, "")


def test_envs_piped_into_a_reader_of_one_line() -> None:
    script = (
        f'"{sys.executable}" -m train.cli envs | "{sys.executable}" -c "import sys; sys.stdin.readline()"'
    )
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_a_broken_pipe_that_is_not_stdout_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise BrokenPipeError("a worker went away")

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=fail)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    with pytest.raises(BrokenPipeError, match="a worker went away"):
        cli.main([])


def test_bc_keeps_the_rl_section_in_run_json(tmp_path: Path) -> None:
    data = tmp_path / "demos"
    collect(str(data), envs.CRAFTER_ID, "crafter_planner", 2, tasks=["collect_wood"], seed=1)
    assert RLConfig().gamma != 0.5 and RLConfig().n_envs != 3
    # One config file for bc and then rl: bc does not read its rl section (a --set rl.* is refused)
    # but keeps it in run.json.
    config = tmp_path / "shared.yaml"
    config.write_text(Path(TINY).read_text() + "rl: {gamma: 0.5, n_envs: 3}\n")
    # image size and action space differ from the data's, so bc rebuilds the policy section
    run_cli(
        "bc", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run"),
        "--set", "train.steps=2",
        "--set", "policy.vision.image_size=[32, 32]", "--set", "policy.action_space.sizes=[5]",
    )  # fmt: skip
    saved = json.loads((tmp_path / "run" / "checkpoint" / "run.json").read_text())
    assert (saved["rl"]["gamma"], saved["rl"]["n_envs"]) == (0.5, 3)
    assert saved["policy"]["vision"]["image_size"] == [64, 64]
    assert saved["policy"]["action_space"]["sizes"] == [17]


def test_agent_last_logits_are_public_and_read_only() -> None:
    agent = Agent(InstructionPolicy(make_tiny_config()), seed=0)
    agent.reset("collect wood")
    with pytest.raises(RuntimeError, match="call act"):
        agent.last_logits  # noqa: B018
    frame = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    action = agent.act({"image": frame}, deterministic=True)
    logits = agent.last_logits
    assert logits.shape == (1, 17)
    assert action == int(logits.argmax())
    probability = agent.policy.distribution(logits).probs_of(torch.tensor([action]))[0]
    assert float(probability) == pytest.approx(agent.last_action_probability())
    with pytest.raises(AttributeError):
        agent.last_logits = logits


def test_nothing_outside_the_agent_reads_its_private_state() -> None:
    found = []
    for package in ("agent", "train"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "agent" / "agent.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and "agent" in node.value.id
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                ):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not found, found


def test_the_model_card_says_how_a_strided_history_is_read() -> None:
    """A card describes the window the agent reads: every frame by default, every Nth when its
    config has a history stride."""
    from train.export_hub import model_card

    fusion = {"fusion_type": "cross_attention", "num_blocks": 2, "num_heads": 4, "projection_dim": 128}
    dense = model_card({"policy": {"fusion_kwargs": {**fusion, "max_history": 32}}}, None, None)
    strided = model_card(
        {"policy": {"fusion_kwargs": {**fusion, "max_history": 256, "history_stride": 8}}}, None, None
    )
    assert "history up to 32 frames)" in dense
    assert "history up to 256 frames, read every 8 steps)" in strided
