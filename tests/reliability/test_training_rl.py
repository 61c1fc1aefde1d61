"""RL under bad input: --resume with nothing to resume, an --init checkpoint for another action
space, TensorBoard curves in tb/ across a resume, Ctrl-C during PPO."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

from helpers import SCRIPT, make_tiny_config, run_cli
from signal_env import SIGNAL_ID

from policies import InstructionPolicy
from train.config import RLConfig, RunConfig, load_run_config
from train.rl import train_rl

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
CRAFTER = "instructcraft/Crafter-Instruct-v0"
BABYAI = "instructcraft/BabyAI-GoToRedBall-v0"
SMALL = [
    "--set",
    "rl.n_envs=1",
    "--set",
    "rl.vec_env=dummy",
    "--set",
    "rl.n_steps=8",
    "--set",
    "rl.batch_size=8",
]


def test_rl_resume_without_a_checkpoint_is_a_clean_error(tmp_path: Path) -> None:
    out = tmp_path / "never-trained"
    result = run_cli(
        "rl",
        "--config",
        TINY,
        *SMALL,
        "--env",
        CRAFTER,
        "--steps",
        "8",
        "--out",
        str(out),
        "--resume",
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: --resume: {out} holds no RL checkpoint" in result.stderr
    assert "run without --resume to start it" in result.stderr


def test_rl_init_with_another_action_space_is_refused_before_any_rollout(tmp_path: Path) -> None:
    crafter = InstructionPolicy(load_run_config(TINY).policy)  # 17 actions, 64x64 frames
    crafter.save_pretrained(tmp_path / "crafter")
    out = tmp_path / "rl"
    result = run_cli(
        "rl", "--config", TINY, *SMALL, "--env", BABYAI, "--steps", "8", "--out", str(out),
        "--init", str(tmp_path / "crafter"), check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert (
        f"error: --init {tmp_path / 'crafter'}: the checkpoint acts in {{'type': 'Discrete', 'n': 17}} "
        f"but {BABYAI} has {{'type': 'Discrete', 'n': 7}}; use a checkpoint trained on {BABYAI}"
    ) in result.stderr
    assert not out.exists()


def test_rl_tensorboard_lands_in_tb_and_continues_across_a_resume(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunConfig(
        policy=make_tiny_config(),
        rl=RLConfig(n_envs=2, vec_env="dummy", n_steps=8, batch_size=16, n_epochs=1, checkpoint_every=16),
    )
    out = tmp_path / "rl"
    train_rl(run, SIGNAL_ID, 32, str(out))
    train_rl(run, SIGNAL_ID, 64, str(out), resume=True)
    assert [p.name for p in (out / "tb").iterdir() if p.is_dir()] == []  # no ppo_1/ below tb/
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("time/fps")] == [16, 32, 48, 64]
    assert json.loads((out / "checkpoint" / "config.json").read_text())["rl_timesteps"] == 64


def test_ctrl_c_during_rl_saves_the_last_update_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "rl"
    settings = ["--set", "rl.n_envs=2", "--set", "rl.vec_env=dummy", "--set", "rl.n_steps=8"]
    settings += ["--set", "rl.batch_size=16", "--set", "rl.n_epochs=1", "--set", "rl.checkpoint_every=1"]
    args = ["rl", "--config", TINY, *settings, "--env", CRAFTER, "--out", str(out), "--json"]
    process = subprocess.Popen(
        [SCRIPT, *args, "--steps", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not (out / "checkpoint" / "trainer.pt").exists():  # the first update is done
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    stopped = re.search(
        r"interrupted after (\d+) of 100000 env steps: checkpoint written to (\S+); resume with `([^`]+)`",
        stderr,
    )
    assert stopped, stderr
    trained = int(stopped.group(1))
    assert trained >= 16 and trained % 16 == 0  # whole rollouts only
    assert json.loads((out / "checkpoint" / "config.json").read_text())["rl_timesteps"] == trained
    assert stopped.group(3) == f"instructcraft rl --env {CRAFTER} --steps 100000 --out {out} --resume"
    run_cli(*args, "--steps", str(trained + 16), "--resume")
    assert json.loads((out / "checkpoint" / "config.json").read_text())["rl_timesteps"] == trained + 16
