"""Expected errors print one line; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import AgentError, AgentSettingError, PlanError
from agent.evaluate import EvaluationInterrupted
from envs.data.store import DatasetError
from envs.errors import (
    EnvsError,
    EnvSettingError,
    FileFormatError,
    InstructionError,
    MissingDependencyError,
    TaskError,
    WrongEnvError,
)
from envs.experts.base import ExpertCannotLabel
from envs.minecraft.actions import ActionError
from envs.workers import EnvIdError, WorkerError
from policies import CheckpointError, CheckpointWriteError, ConfigError, NonFiniteWeightsError, PoliciesError
from train.cli.common import expected_errors, is_expected, run_command
from train.errors import RunFolderError, SettingError, TrainError, TrainingDiverged, TrainingInterrupted

ROOTED = [
    (DatasetError, EnvsError, RuntimeError),
    (WorkerError, EnvsError, RuntimeError),
    (EnvIdError, EnvsError, ValueError),
    (TaskError, EnvsError, ValueError),
    (InstructionError, EnvsError, ValueError),
    (EnvSettingError, EnvsError, ValueError),
    (FileFormatError, EnvsError, ValueError),
    (MissingDependencyError, EnvsError, ImportError),
    (WrongEnvError, EnvsError, TypeError),
    (ExpertCannotLabel, EnvsError, RuntimeError),
    (ActionError, EnvsError, ValueError),
    (ConfigError, PoliciesError, ValueError),
    (CheckpointError, PoliciesError, RuntimeError),
    (NonFiniteWeightsError, PoliciesError, RuntimeError),
    (CheckpointWriteError, PoliciesError, RuntimeError),
    (AgentSettingError, AgentError, ValueError),
    (PlanError, AgentError, ValueError),
    (EvaluationInterrupted, AgentError, RuntimeError),
    (TrainingDiverged, TrainError, RuntimeError),
    (TrainingInterrupted, TrainError, RuntimeError),
    (RunFolderError, TrainError, ValueError),
    (SettingError, TrainError, ValueError),
]


@pytest.mark.parametrize(("error", "root", "builtin"), ROOTED)
def test_each_error_has_its_package_root_and_keeps_its_builtin_base(
    error: type[Exception], root: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, root) and issubclass(error, builtin)
    assert root in expected_errors()


def _failing(error: BaseException):
    def handler(_: argparse.Namespace) -> int:
        raise error

    return handler


def _instance(error: type[Exception]) -> Exception:
    if error is EvaluationInterrupted:
        return EvaluationInterrupted(1, 2, [])
    return error("what failed and how to fix it")


@pytest.mark.parametrize("error", [error for error, _, _ in ROOTED])
def test_every_rooted_error_is_one_line_and_exit_2(
    error: type[Exception], capsys: pytest.CaptureFixture[str]
) -> None:
    instance = _instance(error)
    code = run_command(_failing(instance), argparse.Namespace(command="x"))
    assert code == getattr(instance, "exit_code", 2)
    assert capsys.readouterr().err == f"error: {instance}\n"


def test_an_expected_error_is_one_line_and_its_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(_failing(SettingError("pass --init or --resume, not both")), argparse.Namespace()) == 2
    assert capsys.readouterr().err == "error: pass --init or --resume, not both\n"
    interrupted = TrainingInterrupted("interrupted at step 3", 15)
    assert run_command(_failing(interrupted), argparse.Namespace()) == 143


@pytest.mark.parametrize(
    "error",
    [
        ZeroDivisionError("division by zero"),
        KeyError("wood"),
        ValueError("not enough values to unpack"),
        RuntimeError("stray"),
        IndexError("list index out of range"),
        ImportError("no module named nope"),
        TypeError("unsupported operand"),
    ],
)
def test_a_bug_keeps_its_traceback(error: Exception) -> None:
    assert not is_expected(error)
    with pytest.raises(type(error)):
        run_command(_failing(error), argparse.Namespace(command="x"))


@pytest.mark.parametrize("error", ["KeyError('wood')", "ValueError('stray')", "SettingError('fix it')"])
def test_the_exit_status_of_a_bug_and_of_an_expected_error(error: str) -> None:
    code = (
        "import argparse, sys\n"
        "from train.cli.common import run_command\n"
        "from train.errors import SettingError\n"
        "def handler(args):\n"
        f"    raise {error}\n"
        "sys.exit(run_command(handler, argparse.Namespace(command='x')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if error.startswith("SettingError"):
        assert result.returncode == 2 and result.stderr == "error: fix it\n"
    else:
        assert result.returncode == 1 and "Traceback" in result.stderr, result.stderr


# Bad input that each layer refuses on purpose: every one is an expected error (one line).


def _unknown_expert() -> None:
    from envs.experts import make_expert

    make_expert("nope")


def _unknown_task() -> None:
    from envs.crafter_tasks import resolve_tasks

    resolve_tasks(["collect_wood", "collect_gold"])


def _long_instruction() -> None:
    from envs.spaces import check_instruction

    check_instruction("go " * 200)


def _video_format(tmp_path: Path) -> None:
    import numpy as np

    from envs.video import write_video

    write_video(tmp_path / "clip.avi", [np.zeros((8, 8, 3), np.uint8)])


def _stats_file(tmp_path: Path) -> None:
    from envs.crafter_score import read_stats

    path = tmp_path / "stats.jsonl"
    path.write_bytes(b"\xff\xfe not text")
    read_stats(path)


def _sb3_instruction_mode() -> None:
    from envs.wrappers import make_sb3_env

    make_sb3_env("instructcraft/Crafter-Instruct-v0", instruction="words")


def _minerl_task() -> None:
    from envs.minecraft.env import MineRLInstructEnv

    MineRLInstructEnv("Teleport", env=object())


def _minerl_env_name() -> None:
    from envs.minecraft.tasks import task_for_env_name

    task_for_env_name("MineRLTeleport-v0")


def _expert_env() -> None:
    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)
    from envs.experts import CrafterExpert

    CrafterExpert().reset(gym.make("instructcraft/BabyAI-GoToLocal-v0"), {}, {})


def _shipped_agent() -> None:
    from agent.pretrained import resolve_checkpoint

    resolve_checkpoint("pretrained:nope")


def _phrasings_file(tmp_path: Path) -> None:
    from agent.evaluate import read_phrasings

    path = tmp_path / "phrasings.json"
    path.write_bytes(b"\xff\xfe")
    read_phrasings(str(path), "instructcraft/Crafter-Instruct-v0")


def _rollout_task() -> None:
    from agent.rollout import judging_task

    judging_task("instructcraft/Crafter-Instruct-v0", None, "collect_gold")


def _plan_folder(tmp_path: Path) -> None:
    from agent.plan import Plan

    Plan.load(tmp_path)


def _trainer_state(tmp_path: Path) -> None:
    from train.checkpoint import TRAINER_STATE, read_trainer_state

    (tmp_path / TRAINER_STATE).write_bytes(b"not a zip file")
    read_trainer_state(tmp_path, "cpu")


def _resumed_config(tmp_path: Path) -> None:
    from policies.persist import CONFIG_NAME
    from train.checkpoint import settings_changed_on_resume
    from train.config import RunConfig

    (tmp_path / CONFIG_NAME).write_text('{"no policy": 1}')
    settings_changed_on_resume(tmp_path, RunConfig())


def _weights_header(tmp_path: Path) -> None:
    import shutil

    from agent.pretrained import available, resolve_checkpoint
    from policies import InstructionPolicy

    source = Path(resolve_checkpoint("pretrained:" + available()[0]))
    copy = Path(shutil.copytree(source, tmp_path / "copy"))
    (copy / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    InstructionPolicy.from_pretrained(copy)


BAD_INPUT: list[Callable[..., None]] = [
    _unknown_expert,
    _unknown_task,
    _long_instruction,
    _video_format,
    _stats_file,
    _sb3_instruction_mode,
    _minerl_task,
    _minerl_env_name,
    _expert_env,
    _shipped_agent,
    _phrasings_file,
    _rollout_task,
    _plan_folder,
    _trainer_state,
    _resumed_config,
    _weights_header,
]


@pytest.mark.parametrize("bad_input", BAD_INPUT, ids=lambda function: function.__name__.lstrip("_"))
def test_bad_input_raises_an_expected_error(bad_input: Callable[..., None], tmp_path: Path) -> None:
    arguments = [tmp_path] if "tmp_path" in bad_input.__code__.co_varnames else []
    with pytest.raises(Exception) as caught:
        bad_input(*arguments)
    assert is_expected(caught.value), repr(caught.value)
    if "tmp_path" in bad_input.__code__.co_varnames and bad_input not in (_resumed_config,):
        assert str(tmp_path) in str(caught.value)  # a file's error names the file
