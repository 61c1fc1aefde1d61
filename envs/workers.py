"""Episode work in worker processes: a checked env factory that a parent calls before it starts
any worker, and the one worker pool (``map_jobs``: here, or in spawned processes through
``ordered_map``, which ends the run when a worker fails or dies) that collection, evaluation and
DAgger's rollouts share; inside a ``ray_rollouts()`` block the same jobs run as Ray tasks.

A failure in a worker (an env that cannot be made, a checkpoint that cannot be loaded, a worker
killed by the OS) stops the whole map with one error instead of a pool respawning the worker
forever; the parent checks what it can first so that the user's mistakes fail in seconds.
The pool never holds more than a few results or workers (no more workers than jobs or CPU
cores), and it never outlives its parent: a parent killed outright takes its workers with it.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import gymnasium as gym

from envs import ray_rollouts
from envs.errors import EnvsError, WorkerError

Job = TypeVar("Job")
Result = TypeVar("Result")
State = TypeVar("State")


class EnvIdError(EnvsError, ValueError):
    """An env id that is not registered, or a task choice the env does not take."""


def check_env_id(env_id: str) -> None:
    """Raise ``EnvIdError`` naming the close matches when ``env_id`` is not a registered id."""
    import envs  # noqa: F401  (registers the instructcraft ids)

    if env_id in gym.registry:
        return
    _refuse_minerl_id_without_minerl(env_id)
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise EnvIdError(f"unknown env id {env_id!r}{hint}: `instructcraft envs` lists the ids")


def _refuse_minerl_id_without_minerl(env_id: str) -> None:
    """A MineRL env id (ours, or MineRL's own name) is registered only when minerl is installed:
    without it, say that, and how to install it, instead of suggesting an unrelated id."""
    import envs
    from envs.minecraft import MINERL_TASKS, minerl_id

    if "minerl" not in env_id.lower() or envs.minerl_available():
        return
    ours = [minerl_id(task) for task in MINERL_TASKS]
    by_name = {task.env_name: minerl_id(name) for name, task in MINERL_TASKS.items()}
    meant = by_name.get(env_id) or next(iter(difflib.get_close_matches(env_id, ours, n=1, cutoff=0.6)), None)
    id_hint = f" (the instructcraft id is {meant})" if meant and meant != env_id else ""
    raise EnvIdError(
        f"{env_id} is a MineRL env{id_hint}, and MineRL is not installed: it is an optional extra, "
        "`pip install -e '.[minerl]'` (its build needs a Java 8 JDK and network access; docs/minecraft.md, "
        "'Installing MineRL')"
    )


def make_env(env_id: str, tasks: list[str] | None = None, **env_kwargs: Any) -> gym.Env:
    """``gym.make`` with the user's mistakes (unknown id, task names, a task list for an env
    without tasks) turned into one-line ValueErrors."""
    check_env_id(env_id)
    try:
        return gym.make(env_id, **env_kwargs, **({"task": tasks} if tasks else {}))
    except TypeError as error:
        if tasks and "task" in str(error):
            raise EnvIdError(f"{env_id} has no task choice: drop --tasks") from None
        raise


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def usable_workers(workers: int, jobs: Iterable[Any], what: str = "work") -> int:
    """``workers`` capped to the number of jobs (when ``jobs`` has a length) and to the usable CPU
    cores, saying so in one line on stderr when it caps: each worker holds a whole process (an
    agent with torch is hundreds of MB), so more workers than cores only adds memory."""
    cores = usable_cores()
    count = len(jobs) if isinstance(jobs, Sized) else None
    usable = max(1, min(workers, cores, workers if count is None else count))
    if usable < workers and count != 0:  # no jobs, no worker to speak of
        reasons = f"{cores} CPU cores" + (
            "" if count is None else f", {count} {what} episode{'s' * (count != 1)}"
        )
        print(f"--workers {workers} capped to {usable} ({reasons})", file=sys.stderr, flush=True)
    return usable


def ordered_map(
    work: Callable[[Job], Result],
    jobs: Iterable[Job],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...] = (),
    what: str = "work",
) -> Iterator[Result]:
    """``work(job)`` for each job in ``workers`` spawned processes, results in job order.

    Jobs are taken from ``jobs`` (any iterable, a generator included) as results are consumed,
    at most ``2 * workers`` ahead of the caller, so memory stays flat however many jobs there
    are. Each process runs ``initializer(*initargs)`` once. An exception in a worker is raised
    here; a worker that dies (or whose initializer fails) raises ``WorkerError``. When the
    caller stops iterating or an error is raised, unstarted jobs are cancelled and the workers
    stop at once. Workers ignore SIGINT (a Ctrl-C to the process group stops only this process,
    which stops them) and exit by themselves within a second when this process dies.
    """
    window = 2 * workers  # enough to keep every worker busy while the caller handles a result
    # spawn: workers must not inherit torch threads or CUDA state from a training process.
    context = mp.get_context("spawn")
    # The workers hold only the read end: when this process closes the write end or dies
    # (even by SIGKILL), they read end-of-file and exit.
    stop_reader, stop_writer = context.Pipe(duplex=False)
    executor = ProcessPoolExecutor(
        workers, context, _start_worker, (os.getpid(), stop_reader, initializer, initargs)
    )
    pending: deque[Future[Result]] = deque()
    remaining = iter(jobs)
    finished = False
    try:
        for job in itertools.islice(remaining, window):
            pending.append(_submit(executor, work, job))
        while pending:
            try:
                result = pending.popleft().result()
            except BrokenProcessPool:
                raise WorkerError(
                    f"a {what} worker process failed to start or died (out of memory, killed, or its "
                    "setup raised); nothing was retried. Run with --workers 1 to see the error in this process"
                ) from None
            for job in itertools.islice(remaining, 1):  # the next job starts before the caller works
                pending.append(_submit(executor, work, job))
            yield result
        finished = True
    finally:
        if not finished:
            stop_writer.close()  # running jobs are abandoned: their results would be thrown away
        executor.shutdown(wait=True, cancel_futures=True)
        stop_writer.close()
        stop_reader.close()


def _submit(executor: ProcessPoolExecutor, work: Callable[[Job], Result], job: Job) -> Future[Result]:
    """``executor.submit``, which may start a worker: SIGINT stays blocked while it does, so the
    worker starts with it blocked and ignores it before unblocking it (``_start_worker``), and a
    Ctrl-C arriving meanwhile is delivered here afterwards instead of lost."""
    if not hasattr(signal, "pthread_sigmask"):
        return executor.submit(work, job)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return executor.submit(work, job)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_worker(
    parent: int, stop: Connection, initializer: Callable[..., None], initargs: tuple[Any, ...]
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending Ctrl-C is dropped
    threading.Thread(
        target=_exit_with_parent, args=(parent, stop), name="exit-with-parent", daemon=True
    ).start()
    initializer(*initargs)


def _exit_with_parent(parent: int, stop: Connection) -> None:
    """End this worker when the parent closes the stop pipe or dies; nothing else would: it
    would wait for jobs forever, holding its memory and multiprocessing's resource tracker.
    The parent pid check covers a forked process that inherited the pipe's write end."""
    while not stop.poll(1.0) and os.getppid() == parent:
        pass
    os._exit(0)


def in_worker_process() -> bool:
    """True in a process this module (or Ray, through ``ray_rollouts``) runs jobs in: a setup
    there may take one CPU thread, never in the caller's own process."""
    return mp.parent_process() is not None or ray_rollouts.in_ray_worker()


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
    (capped by ``usable_workers``) is 1, else once in each of ``workers`` spawned processes
    (``ordered_map``). There ``work``, ``setup`` and the jobs must pickle (module-level functions,
    plain data). ``jobs`` may be a generator: it is read as the results are consumed.

    Inside a ``ray_rollouts()`` block (envs/ray_rollouts.py) the jobs run as Ray tasks instead,
    on as many CPUs as the cluster has (``workers`` is the pool's setting only)."""
    session = ray_rollouts.active()  # read here, when the map is made, not when it is first read
    if session is not None:
        return ray_rollouts.ray_map(work, jobs, setup, setup_args, what, session)
    return _pool_map(work, jobs, setup, setup_args, usable_workers(workers, jobs, what), what)


def _pool_map(
    work: Callable[[State, Job], Result],
    jobs: Iterable[Job],
    setup: Callable[..., State],
    setup_args: tuple[Any, ...],
    workers: int,
    what: str,
) -> Iterator[Result]:
    if workers <= 1:
        state = setup(*setup_args)
        for job in jobs:
            yield work(state, job)
        return
    yield from ordered_map(functools.partial(_run, work), jobs, workers, _set_up, (setup, setup_args), what)
