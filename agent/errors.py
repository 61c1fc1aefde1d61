"""The errors agent raises on purpose, under one root (``AgentError``).

A user can act on these (a plan that cannot be followed, an evaluation asked for in a way that
cannot run, a phrasings file that does not parse), so the command line prints them as one line;
any other exception is a bug and keeps its traceback. Errors of the layers below (envs,
policies) pass through with their own roots; ``train.cli.common.expected_errors`` lists every
root in one place. Each class also keeps the built-in base it replaced, so ``except ValueError``
and the like still catch it.
"""

from __future__ import annotations


class AgentError(Exception):
    """An expected error of agent: the message names what failed and how to fix it."""


class AgentSettingError(AgentError, ValueError):
    """An argument the agent, a rollout or an evaluation cannot take as given (an unknown
    shipped agent, a mode, a file of phrasings, an instruction the text encoder cannot hold);
    the message names it and the fix."""


class PlanError(AgentError, ValueError):
    """A plan that cannot be followed; the message names the file and the entry."""


class AgentWriteError(AgentError, OSError):
    """A rollout's result file could not be written (a full disk, permissions); the message names
    the file."""
