"""envs.workers.map_jobs: the one worker pool of collection, evaluation and DAgger."""

from __future__ import annotations

import operator
import os

import pytest

from envs.workers import map_jobs


def test_in_this_process_setup_runs_once_and_results_keep_job_order() -> None:
    calls: list[int] = []

    def setup(offset: int) -> int:
        calls.append(offset)
        return offset

    results = map_jobs(operator.add, [3, 1, 2], setup=setup, setup_args=(10,))
    assert calls == []  # nothing runs before the results are asked for
    assert list(results) == [13, 11, 12]
    assert calls == [10]


def test_in_worker_processes_each_builds_its_state_once_and_results_keep_job_order() -> None:
    # The state is the worker's pid (built by setup there), the work adds the job to it.
    jobs = [0, 1, 2, 3, 4, 5, 6, 7]
    results = list(map_jobs(operator.add, jobs, setup=os.getpid, workers=2, what="test"))
    pids = [result - job for result, job in zip(results, jobs, strict=True)]
    assert os.getpid() not in pids and 1 <= len(set(pids)) <= 2


def test_an_error_in_a_worker_is_raised_here() -> None:
    with pytest.raises(ZeroDivisionError):
        list(map_jobs(operator.truediv, [1, 0, 2], setup=os.getpid, workers=2, what="test"))
