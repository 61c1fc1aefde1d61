"""Resuming a run: a finished run is left as it is, an interrupted one continues with its own recorded
settings (and says which ones --config/--set change), a --set for a section the command does not
read is refused, every output file and --json output is strict JSON, and RL says how it rounds
--steps and logs every update to TensorBoard. Through the CLI's ``main``, in this process, with
tiny budgets."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

import numpy as np
import pytest

import envs
import train.bc as bc_module
from envs.data.collect import collect
from train.bc import train_bc
from train.cli import main
from train.common import Distributed, StopRequest
from train.config import load_run_config

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
CRAFTER = envs.CRAFTER_ID
RL_SMALL = ["--set", "rl.n_envs=1", "--set", "rl.vec_env=dummy", "--set", "rl.n_steps=8"]
RL_SMALL += ["--set", "rl.batch_size=8", "--set", "rl.n_epochs=1"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "demos"
    collect(str(path), CRAFTER, "crafter_planner", 4, tasks=["collect_wood"], seed=5)
    return str(path)


def bc_args(demos: str, out: Path, *args: str) -> list[str]:
    return ["bc", "--data", demos, "--out", str(out), *args]


def rl_args(out: Path, steps: int, *args: str) -> list[str]:
    return ["rl", "--env", CRAFTER, "--steps", str(steps), "--out", str(out), *args]


def strict(text: str) -> object:
    """``text`` parsed as strict JSON: NaN and Infinity are refused."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (TensorBoard event files included), by relative path."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def trained_steps(out: Path) -> int:
    return json.loads((out / "checkpoint" / "config.json").read_text())["trained_steps"]


def scalar_steps(tb: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


# -- strict JSON --------------------------------------------------------------------------------


def test_json_output_maps_non_finite_numbers_to_null() -> None:
    from train.report import strict_json

    data = {"final_loss": float("nan"), "rates": [float("inf"), 0.5], "fps": np.float32("-inf"), "n": 3}
    assert strict(strict_json(data)) == {"final_loss": None, "rates": [None, 0.5], "fps": None, "n": 3}


# -- a finished run -----------------------------------------------------------------------------


def test_resuming_a_finished_bc_run_says_so_and_changes_nothing(
    demos: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    first = bc_args(
        demos, out, "--config", TINY, "--set", "train.steps=4", "--set", "train.val_fraction=0.25"
    )
    assert main(first) == 0
    summary = strict((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["validation"]["episodes"] == 1
    before = snapshot(out)
    capsys.readouterr()

    # The same command with --resume, then the bare resume a newcomer types.
    for resume in ([*first, "--resume", str(out)], bc_args(demos, out, "--resume", str(out / "checkpoint"))):
        assert main(resume) == 0
        said = capsys.readouterr().out
        assert f"{out} is finished (trained 4 steps of train.steps=4)" in said, said
        assert "final loss" not in said
        assert snapshot(out) == before

    assert main(bc_args(demos, out, "--resume", str(out), "--json")) == 0
    captured = capsys.readouterr()
    assert strict(captured.out) == summary
    assert f"{out} is finished" in captured.err
    assert snapshot(out) == before

    # The library call behind it writes nothing either.
    run = load_run_config(TINY, ["train.steps=4", "train.val_fraction=0.25"])
    assert train_bc(run, demos, str(out), resume=str(out), progress=False) == summary
    assert snapshot(out) == before


def test_resuming_a_finished_rl_run_says_so_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rl"
    assert main(rl_args(out, 8, "--config", TINY, *RL_SMALL)) == 0
    summary = strict((out / "summary.json").read_text())
    assert summary["timesteps"] == 8 and set(summary["timings_s"]) == {"env", "inference", "update"}
    before = snapshot(out)
    capsys.readouterr()

    assert main(rl_args(out, 8, "--resume")) == 0
    said = capsys.readouterr().out
    assert f"{out} is finished (8 env steps, --steps 8)" in said, said
    assert "0.0 steps/s" not in said
    assert snapshot(out) == before

    assert main(rl_args(out, 8, "--config", TINY, *RL_SMALL, "--resume", "--json")) == 0
    assert strict(capsys.readouterr().out) == summary
    assert snapshot(out) == before


# -- an interrupted run continues with its own settings -----------------------------------------


def stop_at_step(step: int) -> type[StopRequest]:
    """A ``StopRequest`` that asks the BC loop to stop after ``step`` steps, as Ctrl-C would."""

    class StopAt(StopRequest):
        def agreed(self, distributed: Distributed, device: str) -> bool:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == step:
                self.signal_number = signal.SIGINT
            return bool(self)

    return StopAt


def test_bc_resume_continues_with_the_run_s_own_settings_unless_overridden(
    demos: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(bc_module, "StopRequest", stop_at_step(2))
        code = main(
            bc_args(demos, out, "--config", TINY, "--set", "train.steps=5", "--set", "train.log_every=1")
        )
    assert code == 130
    assert trained_steps(out) == 2
    advice = capsys.readouterr().err
    assert "interrupted at step 2 of 5" in advice, advice
    command = shlex.split(advice.split("resume with `")[1].split("`")[0])
    assert command[:2] == ["instructcraft", "bc"] and "--config" not in command

    # The advised command, no config repeated: the run's own 5 steps and settings, nothing changed.
    assert main(command[1:]) == 0
    captured = capsys.readouterr()
    assert trained_steps(out) == 5 and "trained 5 steps" in captured.out
    assert "changed settings" not in captured.err
    assert scalar_steps(out / "tb", "train/loss") == [1, 2, 3, 4, 5]  # train.log_every=1, as recorded

    # An explicit override wins and is said: key old -> new.
    assert main([*command[1:], "--set", "train.steps=7"]) == 0
    captured = capsys.readouterr()
    assert "resuming at step 5 with changed settings: train.steps 5 -> 7" in captured.err, captured.err
    assert trained_steps(out) == 7
    assert "changed settings" in captured.err and "train.log_every" not in captured.err


def test_rl_resume_continues_with_the_run_s_own_settings_unless_overridden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rl"
    assert main(rl_args(out, 8, "--config", TINY, *RL_SMALL)) == 0
    capsys.readouterr()
    # No config repeated: one env of 8 steps a rollout, as recorded (not 8 envs x 128 steps).
    assert main(rl_args(out, 16, "--resume", "--set", "rl.n_epochs=2", "--json")) == 0
    captured = capsys.readouterr()
    assert strict(captured.out)["timesteps"] == 16
    assert f"note: resuming {out} with changed settings: rl.n_epochs 1 -> 2" in captured.err, captured.err
    assert "rl.n_envs" not in captured.err and "note: --steps" not in captured.err
    recorded = json.loads((out / "checkpoint" / "run.json").read_text())["rl"]
    assert (recorded["n_envs"], recorded["n_steps"], recorded["n_epochs"]) == (1, 8, 2)


BABYAI = "instructcraft/BabyAI-GoToRedBall-v0"


def test_dagger_resume_continues_with_the_run_s_own_settings_unless_overridden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demos, out = tmp_path / "demos", tmp_path / "dagger"
    collect(str(demos), BABYAI, "babyai_bot", 2, seed=0)
    where = ["--data", str(demos), "--env", BABYAI, "--out", str(out)]
    small = ["--rounds", "1", "--episodes", "1", "--steps-per-round", "2", "--eval-episodes", "0"]
    assert main(["dagger", "--config", TINY, "--set", "train.steps=2", *where, *small, "--workers", "1"]) == 0
    capsys.readouterr()
    # Resumed without repeating a setting: the run's own flags and run config, nothing changed.
    assert main(["dagger", *where, "--workers", "1", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "changed settings" not in captured.err, captured.err
    assert "round 1: not evaluated" in captured.out
    # An explicit override is said: key old -> new.
    assert main(["dagger", *where, "--workers", "1", "--resume", "--set", "train.lr=0.01"]) == 0
    assert "train.lr 0.001 -> 0.01" in capsys.readouterr().err


# -- a --set the command does not read ----------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "key", "read"),
    [
        ("bc", "rl.n_envs", "policy.* and train.*"),
        ("rl", "train.steps", "policy.* and rl.*"),
        ("dagger", "rl.n_envs", "policy.* and train.* and dagger.*"),
    ],
)
def test_a_setting_the_command_does_not_read_is_refused_before_any_work(
    command: str, key: str, read: str, demos: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    flags = {
        "bc": ["--data", demos],
        "rl": ["--env", CRAFTER, "--steps", "8"],
        "dagger": ["--data", demos, "--env", CRAFTER, "--rounds", "1"],
    }[command]
    code = main([command, "--config", TINY, *flags, "--out", str(out), "--set", f"{key}=2"])
    assert code == 2
    captured = capsys.readouterr()
    section = key.split(".")[0]
    assert captured.err.strip().splitlines() == [
        f"error: --set {key}: `instructcraft {command}` reads only the {read} settings and would ignore "
        f"{section}.* (read by "
        + " and ".join(
            f"`instructcraft {name}`" for name in {"rl": ["rl"], "train": ["bc", "dagger"]}[section]
        )
        + "): drop it"
    ]
    assert not out.exists()


# -- RL: rounding to whole rollouts, TensorBoard -------------------------------------------------


def test_rl_says_how_it_rounds_steps_and_logs_every_update(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rl"
    assert main(rl_args(out, 12, "--config", TINY, *RL_SMALL)) == 0
    captured = capsys.readouterr()
    assert (
        "note: --steps 12 runs 16 env steps: PPO trains on whole rollouts, 2 rollouts of 1 env x 8 steps "
        "(rl.n_envs x rl.n_steps)"
    ) in captured.err, captured.err
    assert "PPO 16 env steps" in captured.out
    for tag in ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/approx_kl"):
        assert scalar_steps(out / "tb", tag) == [8, 16], tag  # the last update's too
    # Resumed: from 16 to 20 asked, 24 run.
    assert main(rl_args(out, 20, "--resume")) == 0
    assert (
        "note: --steps 20 runs 24 env steps (from 16): PPO trains on whole rollouts, 1 rollout of 1 env"
        in (capsys.readouterr().err)
    )
    assert scalar_steps(out / "tb", "train/value_loss") == [8, 16, 24]


def test_a_one_rollout_rl_run_logs_its_update(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rl"
    assert main(rl_args(out, 8, "--config", TINY, *RL_SMALL)) == 0
    assert "note:" not in capsys.readouterr().err  # 8 steps are one whole rollout: nothing rounded
    assert scalar_steps(out / "tb", "train/value_loss") == [8]
    assert scalar_steps(out / "tb", "train/clip_range") == [8]


def test_every_commands_json_output_is_strict(capsys: pytest.CaptureFixture[str]) -> None:
    """``--json`` of any command (train.cli.common.print_json): a NaN or infinity prints as null."""
    import json as _json

    from train.cli.common import print_json

    print_json({"loss": float("nan"), "rate": float("inf"), "ok": 1.5})
    assert _json.loads(capsys.readouterr().out) == {"loss": None, "rate": None, "ok": 1.5}


def test_rl_reward_flag_reaches_the_env_and_is_refused_where_the_env_has_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Protects ``rl --reward``: it becomes Crafter-Instruct's ``reward_mode`` next to --tasks;
    on another env it exits 2 before any training, naming the flag."""
    import train.rl

    seen: list[dict] = []

    def fake_train_rl(run, env_id, steps, out, **kwargs):
        seen.append(kwargs["env_kwargs"])
        return {"timesteps": steps, "steps_per_s": 1.0, "checkpoint": str(out), "success_rate_per_task": {}}

    monkeypatch.setattr(train.rl, "train_rl", fake_train_rl)
    out = tmp_path / "ppo"
    assert main(rl_args(out, 8, "--tasks", "eat_plant", "--reward", "task_health", *RL_SMALL)) == 0
    assert seen == [{"task": ["eat_plant"], "reward_mode": "task_health"}]
    assert (
        main(
            [
                "rl",
                "--env",
                envs.CRAFTER_OPEN_ID,
                "--steps",
                "8",
                "--out",
                str(tmp_path / "b"),
                "--reward",
                "task",
            ]
        )
        == 2
    )
    assert "--reward sets instructcraft/Crafter-Instruct-v0's reward" in capsys.readouterr().err
    assert len(seen) == 1
