"""Behavioral cloning under bad input: divergence, resumed overrides, bad episodes, a full disk,
TensorBoard curves across a resume."""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import run_cli

import envs
import train.bc as bc
from envs.data.collect import collect
from envs.data.store import Dataset
from policies import InstructionPolicy
from train.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "demos"
    collect(str(path), envs.CRAFTER_ID, "crafter_planner", 6, tasks=["collect_wood", "eat_cow"], seed=5)
    return str(path)


def bc_cli(demos: str, out: Path, *overrides: str, resume: Path | None = None):
    sets = [arg for override in overrides for arg in ("--set", override)]
    extra = ["--resume", str(resume)] if resume else []
    return run_cli("bc", "--config", TINY, *sets, "--data", demos, "--out", str(out), *extra, check=False)


def trained_steps(checkpoint: Path) -> int:
    return json.loads((checkpoint / "config.json").read_text())["trained_steps"]


# -- divergence ---------------------------------------------------------------------------------


def test_divergence_names_a_checkpoint_that_can_act_or_says_none(demos: str, tmp_path: Path) -> None:
    result = bc_cli(demos, tmp_path / "run", "train.lr=1e4", "train.checkpoint_every=1")
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "training stopped" in message and "Lower train.lr" in message, message
    named = re.search(r"the last good checkpoint \((.+), step (\d+)\) is intact", message)
    if named is None:
        assert "the last good checkpoint: none was written" in message, message
        assert not (tmp_path / "run" / "checkpoint").exists()
        return
    checkpoint = Path(named.group(1))
    assert trained_steps(checkpoint) == int(named.group(2))
    policy = InstructionPolicy.from_pretrained(checkpoint).eval()  # refuses NaN/inf weights
    episode = Dataset(demos).episode(0)
    with torch.no_grad():
        output = policy(torch.from_numpy(episode.images[None, :8]), [episode.instruction])
    assert torch.isfinite(output.logits).all()


# -- resume with overrides ------------------------------------------------------------------------


def test_resume_trains_at_the_overridden_lr_and_records_it(demos: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = bc_cli(demos, out, "train.steps=4", "train.checkpoint_every=4", "train.val_fraction=0.1")
    assert first.returncode == 0, first.stderr
    assert "validation (1 held-out episodes)" in first.stdout and "with swapped instructions" in first.stdout
    result = bc_cli(
        demos,
        out,
        "train.steps=6",
        "train.lr=1e-2",
        "train.weight_decay=0.2",
        "train.log_every=1",
        resume=out,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "resuming at step 4 with changed settings" in result.stderr
        and "train.lr 0.001 -> 0.01" in result.stderr
    )
    state = torch.load(out / "checkpoint" / "trainer.pt", weights_only=True)
    expected = 1e-2 * bc.lr_lambda(6, 2, 6, 0.05)
    for group in state["optimizer"]["param_groups"]:
        assert group["lr"] == pytest.approx(expected, rel=1e-9)
        assert group["initial_lr"] == 1e-2 and group["weight_decay"] == 0.2
    recorded = json.loads((out / "checkpoint" / "run.json").read_text())["train"]
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())["train"]
    assert recorded["lr"] == resolved["lr"] == 1e-2
    assert recorded["weight_decay"] == resolved["weight_decay"] == 0.2


def test_resume_refuses_a_different_architecture(demos: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert bc_cli(demos, out, "train.steps=2").returncode == 0
    result = bc_cli(demos, out, "train.steps=4", "policy.fusion_kwargs.num_heads=4", resume=out)
    assert result.returncode == 2
    assert "policy.fusion_kwargs.num_heads: 2 -> 4" in result.stderr
    assert "a resumed run keeps the architecture" in result.stderr
    assert trained_steps(out / "checkpoint") == 2


# -- bad episodes ---------------------------------------------------------------------------------


def damaged_copy(demos: str, tmp_path: Path) -> tuple[Path, list[int]]:
    broken = tmp_path / "broken"
    shutil.copytree(demos, broken)
    index = [json.loads(line) for line in (broken / "index.jsonl").read_text().splitlines()]
    (broken / index[1]["file"]).unlink()  # missing
    flipped = bytearray((broken / index[4]["file"]).read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # bad checksum
    (broken / index[4]["file"]).write_bytes(bytes(flipped))
    return broken, [1, 4]


def test_a_bad_episode_stops_bc_before_step_one(demos: str, tmp_path: Path) -> None:
    broken, bad = damaged_copy(demos, tmp_path)
    result = bc_cli(str(broken), tmp_path / "out", "train.steps=2")
    assert result.returncode == 2, result.stderr
    assert "is corrupt or truncated: 2 problem(s) in 6 episodes, found before training" in result.stderr
    for number in bad:
        assert f"(episode {number})" in result.stderr
    assert f"instructcraft data check {broken}" in result.stderr
    assert "train.skip_bad_episodes=true to train on the other 4 episodes" in result.stderr
    assert not (tmp_path / "out" / "checkpoint").exists()
    assert not (tmp_path / "out" / "tb").exists()  # stopped before anything was trained or logged


def test_skip_bad_episodes_trains_on_the_rest(demos: str, tmp_path: Path) -> None:
    broken, bad = damaged_copy(demos, tmp_path)
    result = bc_cli(str(broken), tmp_path / "out", "train.steps=3", "train.skip_bad_episodes=true")
    assert result.returncode == 0, result.stderr
    assert f"skipping 2 unreadable episode(s) of {broken} (train.skip_bad_episodes): {bad}" in result.stderr
    assert trained_steps(tmp_path / "out" / "checkpoint") == 3


# -- a full disk ----------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["weights", "trainer"])
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(
    demos: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failing: str,
) -> None:
    out = tmp_path / "run"
    argv = ["bc", "--config", TINY, "--set", "train.steps=4", "--set", "train.checkpoint_every=2"]
    argv += ["--data", demos, "--out", str(out)]
    writes = {"count": 0}
    if failing == "weights":
        import policies.persist

        original = policies.persist.save_file

        def save_file(state, path, metadata=None):
            writes["count"] += 1
            if writes["count"] == 2:  # the step-4 checkpoint
                raise OSError(errno.ENOSPC, "No space left on device")
            original(state, path, metadata=metadata)

        monkeypatch.setattr(policies.persist, "save_file", save_file)
        expected_file = out / "checkpoint" / "model.safetensors"
    else:
        original = torch.save

        def save(obj, path, *args, **kwargs):
            writes["count"] += 1
            if writes["count"] == 2:
                # What torch reports on a full disk; the disk is full, too.
                monkeypatch.setattr(
                    shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0)
                )
                raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 2048 vs 1984")
            original(obj, path, *args, **kwargs)

        monkeypatch.setattr(bc.torch, "save", save)
        expected_file = out / "checkpoint" / "trainer.pt"
    code = cli_main(argv)
    error = capsys.readouterr().err
    assert code == 2
    assert re.search(
        rf"error: no space left on \S+ while writing {re.escape(str(expected_file))}; "
        "the previous checkpoint is intact",
        error,
    ), error
    assert "inline_container" not in error
    assert trained_steps(out / "checkpoint") == 2
    InstructionPolicy.from_pretrained(out / "checkpoint")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.resolved.yaml", "tb"]


# -- TensorBoard across a resume ------------------------------------------------------------------


def test_tensorboard_curves_continue_across_a_resume(demos: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    common = ("train.log_every=5", "train.checkpoint_every=15")
    assert bc_cli(demos, out, "train.steps=15", *common).returncode == 0
    assert bc_cli(demos, out, "train.steps=25", *common, resume=out).returncode == 0
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    for tag in ("train/loss", "train/lr"):
        steps = [event.step for event in events.Scalars(tag)]
        assert steps == [5, 10, 15, 20, 25], (tag, steps)
    assert np.isfinite([event.value for event in events.Scalars("train/loss")]).all()
