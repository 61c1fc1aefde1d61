"""Training output folders: a run never replaces another run's checkpoint unless it continues it,
two runs never write one folder at once (torchrun included), and settings that a run from a
checkpoint cannot apply are refused by name rather than ignored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SCRIPT, make_tiny_config, run_cli
from signal_env import SIGNAL_ID

from train.common import run_folder_lock
from train.config import RLConfig, RunConfig
from train.errors import RunFolderError
from train.rl import train_rl

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
CRAFTER = "instructcraft/Crafter-Instruct-v0"
RL_SMALL = ["--set", "rl.n_envs=1", "--set", "rl.vec_env=dummy", "--set", "rl.n_steps=8"]
RL_SMALL += ["--set", "rl.batch_size=8", "--set", "rl.n_epochs=1"]


def bc_cli(data: Path, out: Path, *args: str, steps: int = 2) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "bc", "--config", TINY, "--set", f"train.steps={steps}", "--data", str(data), "--out", str(out),
        *args, check=False,
    )  # fmt: skip


def rl_cli(out: Path, *args: str, steps: int = 8) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "rl", "--config", TINY, *RL_SMALL, "--env", CRAFTER, "--steps", str(steps), "--out", str(out),
        *args, check=False,
    )  # fmt: skip


def checkpoint_bytes(out: Path) -> bytes:
    return (out / "checkpoint" / "model.safetensors").read_bytes()


def saved_policy(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "config.json").read_text())["policy"]


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


# -- a run into another run's folder -------------------------------------------------------------


def test_bc_into_a_run_folder_is_refused_unless_it_resumes_that_run(
    crafter_demos: Path, crafter_checkpoint: Path, tmp_path: Path
) -> None:
    out, other = tmp_path / "run", tmp_path / "other"
    assert bc_cli(crafter_demos, out).returncode == 0
    assert bc_cli(crafter_demos, other).returncode == 0
    kept = checkpoint_bytes(out)
    refused = f"error: {out} already holds a bc run ({out / 'checkpoint'})"
    for extra in ([], ["--init", str(crafter_checkpoint)], ["--resume", str(other)]):
        result = bc_cli(crafter_demos, out, *extra, steps=4)
        assert result.returncode == 2, result.stderr
        assert last_line(result).startswith(refused), result.stderr
        assert f"pass --resume {out} to continue it, or another --out" in result.stderr
        assert "Traceback" not in result.stderr
    assert checkpoint_bytes(out) == kept  # nothing of the first run was replaced
    resumed = bc_cli(crafter_demos, out, "--resume", str(out / "checkpoint"), steps=4)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "checkpoint" / "config.json").read_text())["trained_steps"] == 4


def test_bc_into_an_empty_existing_folder_trains(crafter_demos: Path, tmp_path: Path) -> None:
    out = tmp_path / "made-by-hand"
    out.mkdir()
    result = bc_cli(crafter_demos, out)
    assert result.returncode == 0, result.stderr
    assert (out / "checkpoint" / "model.safetensors").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint",
        "config.resolved.yaml",
        "summary.json",
        "tb",
    ]


def test_rl_into_a_run_folder_without_resume_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "rl"
    assert rl_cli(out).returncode == 0
    kept = checkpoint_bytes(out)
    result = rl_cli(out, steps=16)
    assert result.returncode == 2, result.stderr
    assert last_line(result) == (
        f"error: {out} already holds a rl run ({out / 'checkpoint'}): pass --resume to continue it, "
        "or another --out"
    )
    assert checkpoint_bytes(out) == kept


# -- two runs at once ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_bc_run_into_a_folder_being_written_fails_at_once(
    crafter_demos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen(
        [SCRIPT, "bc", "--config", TINY, "--set", "train.steps=100000", "--set", "train.checkpoint_every=100000",
         "--data", str(crafter_demos), "--out", str(out), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.resolved.yaml").exists():  # the first run is set up and writing
            assert first.poll() is None and time.monotonic() < deadline, first.stderr
            time.sleep(0.1)
        began = time.monotonic()
        second = bc_cli(crafter_demos, out, steps=2)
        assert second.returncode == 2, second.stderr
        assert last_line(second) == (
            f"error: {out} is being written by another training run: wait for it to end, or pass another --out"
        )
        assert time.monotonic() - began < 60  # refused at start, not after training
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr  # stopped by SIGTERM, with its own checkpoint
    assert json.loads((out / "checkpoint" / "config.json").read_text())["trained_steps"] >= 1


def test_rl_into_a_folder_being_written_fails_at_once(tmp_path: Path) -> None:
    out = tmp_path / "rl"
    run = RunConfig(
        policy=make_tiny_config(),
        rl=RLConfig(n_envs=1, vec_env="dummy", n_steps=8, batch_size=8, n_epochs=1),
    )
    with run_folder_lock(out):  # as a run writing the folder holds it
        with pytest.raises(RunFolderError, match="is being written by another training run"):
            train_rl(run, SIGNAL_ID, 8, str(out))
        assert [path.name for path in out.iterdir()] == [".lock"]  # the refused run wrote nothing


def test_the_run_lock_is_exclusive_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with run_folder_lock(out):
        (out / "summary.json").write_text("{}")
        refused = pytest.raises(RunFolderError, match=f"{out} is being written by another training run")
        with refused, run_folder_lock(out):
            pass
    assert [p.name for p in out.iterdir()] == ["summary.json"]  # what the run wrote, no lock file
    with run_folder_lock(out):  # free again once the run ended
        pass
    with run_folder_lock(tmp_path / "refused"):  # a run refused before it wrote anything
        pass
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_torchrun_bc_writes_once_and_refuses_a_second_run_on_every_rank(
    crafter_demos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"

    def torchrun(port: int) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
            "-m", "train.cli", "bc", "--config", TINY, "--set", "train.steps=2", "--set", "train.device=cpu",
            "--data", str(crafter_demos), "--out", str(out),
        ]  # fmt: skip
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=REPO)

    first = torchrun(29533)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((out / "checkpoint" / "config.json").read_text())["trained_steps"] == 2
    kept = checkpoint_bytes(out)
    second = torchrun(29534)
    assert second.returncode != 0
    assert f"error: {out} already holds a bc run" in second.stderr, second.stderr[-3000:]
    assert checkpoint_bytes(out) == kept


# -- settings a run from a checkpoint cannot apply -----------------------------------------------


def test_bc_init_refuses_policy_settings_it_would_ignore(
    crafter_demos: Path, crafter_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tuned"
    init = ["--init", str(crafter_checkpoint)]
    result = bc_cli(crafter_demos, out, *init, "--set", "policy.fusion_kwargs.num_heads=4")
    assert result.returncode == 2, result.stderr
    assert last_line(result) == (
        f"error: --init {crafter_checkpoint}: the run trains the checkpoint's policy as it was built, so "
        "--set policy.fusion_kwargs.num_heads=4 (the checkpoint has 2) cannot apply: drop those overrides, "
        "or train a new policy without --init"
    )
    assert not out.exists()
    # The checkpoint's own value, and a training-only field, are fine; run.json records the model
    # that trained: the checkpoint's architecture with the dropout asked for.
    applied = ["--set", "policy.fusion_kwargs.num_heads=2", "--set", "policy.instruction_dropout=0.3"]
    result = bc_cli(crafter_demos, out, *init, *applied)
    assert result.returncode == 0, result.stderr
    recorded = json.loads((out / "checkpoint" / "run.json").read_text())["policy"]
    expected = {**saved_policy(crafter_checkpoint), "instruction_dropout": 0.3}
    assert recorded == expected == saved_policy(out / "checkpoint")


def test_rl_from_a_checkpoint_refuses_policy_settings_and_records_the_trained_policy(
    crafter_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rl"
    init = ["--init", str(crafter_checkpoint)]
    result = rl_cli(out, *init, "--set", "policy.fusion_kwargs.max_history=32")
    assert result.returncode == 2, result.stderr
    assert "--set policy.fusion_kwargs.max_history=32 (the checkpoint has 8) cannot apply" in last_line(
        result
    ), result.stderr
    assert not out.exists()
    result = rl_cli(out, *init)  # tiny.yaml's policy differs from the checkpoint's
    assert result.returncode == 0, result.stderr
    recorded = json.loads((out / "checkpoint" / "run.json").read_text())
    assert recorded["policy"] == saved_policy(crafter_checkpoint) == saved_policy(out / "checkpoint")
    kept = checkpoint_bytes(out)
    result = rl_cli(out, *init, "--resume", "--set", "policy.instruction_dropout=0.5", steps=16)
    assert result.returncode == 2, result.stderr
    assert last_line(result) == (
        f"error: --resume {out / 'checkpoint'}: the run trains the checkpoint's policy as it was built, so "
        "--set policy.instruction_dropout=0.5 (the checkpoint has 0.0) cannot apply: drop those overrides, "
        "or start a new run in another --out"
    )
    assert checkpoint_bytes(out) == kept


# -- bad RL settings get one line ------------------------------------------------------------------


def test_rl_batch_size_of_one_is_refused_in_one_line(tmp_path: Path) -> None:
    result = rl_cli(tmp_path / "rl", "--set", "rl.batch_size=1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: rl.batch_size must be >= 2, got 1"


def test_rl_on_an_env_without_instructions_is_refused_in_one_line_with_subprocess_envs(
    tmp_path: Path,
) -> None:
    out = tmp_path / "rl"
    result = run_cli(
        "rl", "--config", TINY, "--set", "rl.n_envs=2", "--set", "rl.vec_env=subproc", "--set", "rl.n_steps=8",
        "--set", "rl.batch_size=8", "--env", "CartPole-v1", "--steps", "8", "--out", str(out), check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "instruction" in lines[0], result.stderr
    assert not out.exists()
