"""The errors envs raises on purpose, under one root (``EnvsError``).

A user can act on these (an unknown task, a bad dataset, a worker that could not start, ...), so
the command line prints them as one line; any other exception is a bug and keeps its traceback.
Each of the project's leaves (envs, policies) has its own root, since neither may import the
other; ``train.cli.common.expected_errors`` gathers them in one place. Each class also keeps the
built-in base it replaced, so ``except ValueError`` and the like still catch it.
"""

from __future__ import annotations


class EnvsError(Exception):
    """An expected error of envs: the message names what failed and how to fix it."""


class TaskError(EnvsError, ValueError):
    """An unknown task, level or MineRL env name, or a task choice the env cannot make; the
    message lists the known ones."""


class InstructionError(EnvsError, ValueError):
    """An instruction an env or a wrapper cannot carry (too long, non-printable, more tokens than
    allowed); the message says which limit and how to fit it."""


class EnvSettingError(EnvsError, ValueError):
    """An argument an env, wrapper, expert or video writer cannot take; the message names the
    argument, the value and what it takes."""


class FileFormatError(EnvsError, ValueError):
    """A file envs reads (crafter's ``stats.jsonl``) that does not hold what it should; the message
    names the file and the line."""


class WorkerError(EnvsError, RuntimeError):
    """A worker process (the pool's or a Ray worker) failed to start or died; the message says
    which work and why."""


class MissingDependencyError(EnvsError, ImportError):
    """An optional package (MineRL) that is not installed; the message says how to install it."""


class WrongEnvError(EnvsError, TypeError):
    """An expert given an env of another kind (the crafter planner on a BabyAI level, say)."""
