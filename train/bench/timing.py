"""How every benchmark times: medians of repeats, and blocks of A and B interleaved so that machine
noise (other processes, clock changes, a warming cache) hits both alike."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

# A stepper: ``step(action) -> done`` and ``reset()`` over one env.
Stepper = tuple[Callable[[int], bool], Callable[[], None]]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` as a block for :func:`interleaved`: its wall time."""

    def block() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return block


def interleaved(blocks: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Total seconds of each block over ``rounds`` rounds; every round runs every block once, in
    order. A block returns the seconds it measured (:func:`timed` for wall time)."""
    totals = dict.fromkeys(blocks, 0.0)
    for _ in range(rounds):
        for name, block in blocks.items():
            totals[name] += block()
    return totals


def timed_steps(env_step: Callable[[int], bool], reset: Callable[[], None], actions: np.ndarray) -> float:
    """Seconds spent inside step calls over ``actions``; resets (on done) are not timed."""
    total = 0.0
    for action in actions:
        start = time.perf_counter()
        done = env_step(int(action))
        total += time.perf_counter() - start
        if done:
            reset()
    return total


def interleaved_sps(
    make_a: Callable[[], Stepper], make_b: Callable[[], Stepper], actions: np.ndarray, rounds: int
) -> tuple[float, float]:
    """Steps/s of A and B, alternating blocks so machine noise hits both alike."""
    step_a, reset_a = make_a()
    step_b, reset_b = make_b()
    seconds = interleaved(
        {
            "a": lambda: timed_steps(step_a, reset_a, actions),
            "b": lambda: timed_steps(step_b, reset_b, actions),
        },
        rounds,
    )
    steps = rounds * len(actions)
    return steps / seconds["a"], steps / seconds["b"]
