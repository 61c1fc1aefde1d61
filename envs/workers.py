"""Episode work in worker processes: a checked env factory that a parent calls before it starts
any worker, and the one worker pool (``map_jobs``: here, or in spawned processes through
``ordered_map``, which ends the run when a worker fails or dies) that collection, evaluation and
DAgger's rollouts share.

A failure in a worker (an env that cannot be made, a checkpoint that cannot be loaded, a worker
killed by the OS) stops the whole map with one error instead of a pool respawning the worker
forever; the parent checks what it can first so that the user's mistakes fail in seconds.
"""

from __future__ import annotations

import difflib
import functools
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import gymnasium as gym

Job = TypeVar("Job")
Result = TypeVar("Result")
State = TypeVar("State")


class WorkerError(RuntimeError):
    """A worker process failed to start or died; the message says which work and why."""


def check_env_id(env_id: str) -> None:
    """Raise ValueError naming the close matches when ``env_id`` is not a registered id."""
    import envs  # noqa: F401  (registers the instructcraft ids)

    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown env id {env_id!r}{hint}: `instructcraft envs` lists the ids")


def make_env(env_id: str, tasks: list[str] | None = None, **env_kwargs: Any) -> gym.Env:
    """``gym.make`` with the user's mistakes (unknown id, task names, a task list for an env
    without tasks) turned into one-line ValueErrors."""
    check_env_id(env_id)
    try:
        return gym.make(env_id, **env_kwargs, **({"task": tasks} if tasks else {}))
    except TypeError as error:
        if tasks and "task" in str(error):
            raise ValueError(f"{env_id} has no task choice: drop --tasks") from None
        raise


def ordered_map(
    work: Callable[[Job], Result],
    jobs: Iterable[Job],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...] = (),
    what: str = "work",
) -> Iterator[Result]:
    """``work(job)`` for each job in ``workers`` spawned processes, results in job order.

    Each process runs ``initializer(*initargs)`` once. An exception in a worker is raised here;
    a worker that dies (or whose initializer fails) raises ``WorkerError``. Unstarted jobs are
    cancelled when the caller stops iterating or an error is raised.
    """
    # spawn: workers must not inherit torch threads or CUDA state from a training process.
    executor = ProcessPoolExecutor(workers, mp.get_context("spawn"), initializer, initargs)
    try:
        futures: list[Future[Result]] = [executor.submit(work, job) for job in jobs]
        for future in futures:
            try:
                yield future.result()
            except BrokenProcessPool:
                raise WorkerError(
                    f"a {what} worker process failed to start or died (out of memory, killed, or its "
                    "setup raised); nothing was retried. Run with --workers 1 to see the error in this process"
                ) from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


_process_state: dict[str, Any] = {}  # what ``setup`` built in this worker process


def _set_up(setup: Callable[..., Any], setup_args: tuple[Any, ...]) -> None:
    _process_state["state"] = setup(*setup_args)


def _run(work: Callable[[Any, Any], Any], job: Any) -> Any:
    return work(_process_state["state"], job)


def map_jobs(
    work: Callable[[State, Job], Result],
    jobs: Iterable[Job],
    *,
    setup: Callable[..., State],
    setup_args: tuple[Any, ...] = (),
    workers: int = 1,
    what: str = "work",
) -> Iterator[Result]:
    """``work(state, job)`` for each job, results in job order, where ``state = setup(*setup_args)``
    is built once per process (the env, the expert, the agent): in this process when ``workers``
    <= 1, else once in each of ``workers`` spawned processes (``ordered_map``). There ``work``,
    ``setup`` and the jobs must pickle (module-level functions, plain data)."""
    if workers <= 1:
        state = setup(*setup_args)
        for job in jobs:
            yield work(state, job)
        return
    yield from ordered_map(functools.partial(_run, work), jobs, workers, _set_up, (setup, setup_args), what)
