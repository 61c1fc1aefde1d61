"""Ctrl-C (SIGINT) or SIGTERM during training: the step finishes, a resumable checkpoint is
written, the message says how to resume, the exit code is 128 + the signal number."""

from __future__ import annotations

import json
import re
import shlex
import signal
from pathlib import Path

import pytest
from helpers import interrupt_when, run_cli

import envs
from envs.data.collect import collect

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "demos"
    collect(str(path), envs.CRAFTER_ID, "crafter_planner", 4, tasks=["collect_wood"], seed=3)
    return str(path)


def test_ctrl_c_during_bc_saves_and_resumes(demos: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["bc", "--config", TINY, "--set", "train.steps=400", "--set", "train.log_every=1"]
    args += ["--set", "train.checkpoint_every=1000", "--data", demos, "--out", str(out)]
    code, stderr = interrupt_when(args, re.compile(r"\b([1-9]\d*)/400\b"), signal.SIGINT)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert "SIGINT: finishing this step, then writing a checkpoint" in stderr
    stopped = re.search(
        r"interrupted at step (\d+) of 400: checkpoint written to (\S+); resume with `([^`]+)`", stderr
    )
    assert stopped, stderr
    step = int(stopped.group(1))
    assert 1 <= step < 400 and stopped.group(2) == str(out / "checkpoint")
    assert json.loads((out / "checkpoint" / "config.json").read_text())["trained_steps"] == step
    resume = shlex.split(stopped.group(3))
    assert resume[0] == "instructcraft" and resume[-2:] == ["--resume", str(out)]
    # The printed command, with a shorter budget: training continues from the saved step.
    run_cli(*resume[1:], "--set", f"train.steps={step + 2}")
    assert json.loads((out / "checkpoint" / "config.json").read_text())["trained_steps"] == step + 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == list(range(1, step + 3))


def test_sigterm_during_bc_exits_143_with_a_checkpoint(demos: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["bc", "--config", TINY, "--set", "train.steps=400", "--set", "train.checkpoint_every=1000"]
    args += ["--data", demos, "--out", str(out)]
    code, stderr = interrupt_when(args, re.compile(r"\b([1-9]\d*)/400\b"), signal.SIGTERM)
    assert code == 143, stderr
    step = int(re.search(r"interrupted at step (\d+)", stderr).group(1))
    assert json.loads((out / "checkpoint" / "config.json").read_text())["trained_steps"] == step
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.resolved.yaml", "tb"]
