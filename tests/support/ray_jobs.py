"""Jobs for the Ray backend tests: module-level functions (a Ray worker imports them by name) that
play a few Crafter steps and can kill their own worker process mid-episode."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym

import envs  # noqa: F401  (registers the instructcraft ids in the Ray worker)


class Attempt(NamedTuple):
    """A job: the episode's seed, and how many of its attempts are killed mid-episode."""

    seed: int
    deaths: int


def crafter_env(markers: str) -> tuple[gym.Env, Path]:
    """A worker's state: a Crafter-Instruct env and the folder the attempts are logged in."""
    return gym.make("instructcraft/Crafter-Instruct-v0"), Path(markers)


def steps_then_maybe_die(state: tuple[gym.Env, Path], job: Attempt) -> int:
    """Play five steps of the episode with seed ``job.seed``; an attempt numbered ``job.deaths`` or
    lower (counting from 1 per seed) is killed by SIGKILL mid-episode, as the OS's OOM killer
    would. Returns ten times the seed plus the steps played."""
    env, markers = state
    seed, deaths = job
    log = markers / f"seed_{seed}.attempts"
    with log.open("a") as attempts:
        attempts.write(f"{os.getpid()}\n")
    attempt = len(log.read_text().splitlines())
    env.reset(seed=seed, options={"task": "collect_wood"})
    for step in range(5):
        env.step(0)
        if step == 2 and attempt <= deaths:
            os.kill(os.getpid(), signal.SIGKILL)
    return 10 * seed + 5


def divide_by_seed(markers: Path, job: Attempt) -> float:
    """1 / seed, each attempt logged: seed 0 raises ZeroDivisionError in the worker."""
    with (markers / f"seed_{job.seed}.attempts").open("a") as attempts:
        attempts.write(f"{os.getpid()}\n")
    return 1 / job.seed
