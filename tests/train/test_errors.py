"""Expected errors print one line; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse

import pytest

from envs.data.store import DatasetError
from envs.errors import EnvsError
from envs.workers import EnvIdError, WorkerError
from policies import CheckpointError, CheckpointWriteError, ConfigError, NonFiniteWeightsError, PoliciesError
from train.cli.common import expected_errors, run_command
from train.errors import RunFolderError, SettingError, TrainError, TrainingDiverged, TrainingInterrupted


@pytest.mark.parametrize(
    ("error", "root", "builtin"),
    [
        (DatasetError, EnvsError, RuntimeError),
        (WorkerError, EnvsError, RuntimeError),
        (EnvIdError, EnvsError, ValueError),
        (ConfigError, PoliciesError, ValueError),
        (CheckpointError, PoliciesError, RuntimeError),
        (NonFiniteWeightsError, PoliciesError, RuntimeError),
        (CheckpointWriteError, PoliciesError, RuntimeError),
        (TrainingDiverged, TrainError, RuntimeError),
        (TrainingInterrupted, TrainError, RuntimeError),
        (RunFolderError, TrainError, ValueError),
        (SettingError, TrainError, ValueError),
    ],
)
def test_each_error_has_its_package_root_and_keeps_its_builtin_base(
    error: type[Exception], root: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, root) and issubclass(error, builtin)
    assert root in expected_errors()


def _failing(error: BaseException):
    def handler(_: argparse.Namespace) -> int:
        raise error

    return handler


def test_an_expected_error_is_one_line_and_its_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(_failing(SettingError("pass --init or --resume, not both")), argparse.Namespace()) == 2
    assert capsys.readouterr().err == "error: pass --init or --resume, not both\n"
    interrupted = TrainingInterrupted("interrupted at step 3", 15)
    assert run_command(_failing(interrupted), argparse.Namespace()) == 143


def test_a_bug_keeps_its_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        run_command(_failing(ZeroDivisionError("division by zero")), argparse.Namespace())
