"""The errors train raises on purpose, under one root (``TrainError``).

A user can act on these, so the command line prints them as one line; any other exception is a
bug and keeps its traceback. Each package has its own root (envs and policies import nothing of
ours, so they cannot share one); ``train.cli.common.expected_errors`` lists them all, in one
place. A class keeps the built-in base it always had (``RuntimeError``, ``ValueError``), so
existing ``except`` clauses still catch it.
"""

from __future__ import annotations

import signal


class TrainError(Exception):
    """An expected error of train: the message names what failed and how to fix it."""


class TrainingDiverged(TrainError, RuntimeError):
    """The loss, the outputs or the weights became NaN or inf; the last good checkpoint is left
    as it was."""


class TrainingInterrupted(TrainError, RuntimeError):
    """SIGINT or SIGTERM stopped training after a finished step and a resumable checkpoint.
    ``exit_code`` is the shell's convention for the signal: 130 for Ctrl-C, 143 for SIGTERM."""

    def __init__(self, message: str, signal_number: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signal_number)


class RunFolderError(TrainError, ValueError):
    """``--out`` names a folder that holds another run's checkpoint, or one another run is
    writing now: starting there would replace or interleave that run's files."""


class SettingError(TrainError, ValueError):
    """A run that cannot start as asked (flags that exclude each other, a checkpoint or data that
    do not fit the run); the message names the setting and the fix."""


class OutputWriteError(TrainError, OSError):
    """A summary or result file could not be written (a full disk, permissions); the message
    names the file and says the previous one is intact."""
