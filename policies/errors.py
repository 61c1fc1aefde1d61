"""The errors policies raises on purpose, under one root (``PoliciesError``).

A user can act on these (a config field, a checkpoint that cannot be loaded, a disk that is
full), so the command line prints them as one line; any other exception is a bug and keeps its
traceback. policies imports nothing of the project's, so this root is its own;
``train.cli.common.expected_errors`` gathers every package's root in one place. Each class also
keeps the built-in base it always had, so ``except ValueError`` and the like still catch it.
"""

from __future__ import annotations


class PoliciesError(Exception):
    """An expected error of policies: the message names what failed and how to fix it."""


class ConfigError(PoliciesError, ValueError):
    """A config value that breaks a rule; the message names field, value and rule."""


class CheckpointError(PoliciesError, RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message names the file and the fix."""


class NonFiniteWeightsError(CheckpointError):
    """Weights holding NaN or inf (a diverged run): they are never written and never loaded."""


class CheckpointWriteError(PoliciesError, RuntimeError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""
