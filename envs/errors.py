"""The root of the errors envs raises on purpose.

A user can act on these (a bad dataset, a worker that could not start, ...), so the command line
prints them as one line; any other exception is a bug and keeps its traceback. Each of the
project's leaves (envs, policies) has its own root, since neither may import the other;
``train.errors.EXPECTED_ERRORS`` gathers them in one place.
"""

from __future__ import annotations


class EnvsError(Exception):
    """An expected error of envs: the message names what failed and how to fix it."""
