"""Episodes as Ray tasks: the rollout backend for a machine's cores or a whole cluster.

``map_jobs`` (envs/workers.py) runs its jobs here instead of in its own process pool while a
``ray_rollouts()`` block is active (the CLI opens one for ``--ray`` / ``--ray-address``)::

    with ray_rollouts():              # a local Ray with this machine's cores
        collect_dataset(...)          # or evaluate(...), run_dagger(...)
    with ray_rollouts("10.0.0.1:6379"):  # join the cluster `ray start --head` made
        ...

Each job is one Ray task asking for one CPU; its worker process builds the job's state (the env,
the expert, the agent) once with ``setup`` and keeps it for the map's later jobs (the pool's
per-process state, the same cost). Results come back to this process in job order, at most two
per cluster CPU in flight, so memory stays flat; the caller stays the only writer of what it
writes (a dataset's lock and crash safety do not change). Since every job carries its seeds,
a map gives the same results whichever backend runs it.

Failures: an exception raised by the work is raised here as itself; a task whose worker process
dies (killed, out of memory, a node lost) is retried once by Ray, and a second death stops the
map with a ``WorkerError`` naming the job. Leaving the map (an error, Ctrl-C, a caller that stops
reading) cancels the tasks still running. Ray is an optional extra (``pip install -e '.[ray]'``);
nothing here imports it until a block opens.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import os
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from envs.errors import EnvsError, MissingDependencyError, WorkerError

INSTALL = "Ray is an optional extra: `pip install -e '.[ray]'` (the dev extra includes it)"


class RayClusterError(EnvsError, ConnectionError):
    """A Ray cluster that could not be started or joined; the message names the address and
    how to get a right one."""


@dataclass
class RayRollouts:
    """An open ``ray_rollouts()`` block: where its episodes go. Ray is started or joined by the
    first map that runs (``connect``), so a command's own checks (the env, the tasks, the
    checkpoint) run before any Ray process starts."""

    address: str | None  # None: a local Ray started here
    num_cpus: int | None = None  # a local Ray's CPUs (None: Ray's count of this machine's)
    cpus: int = 0  # the cluster's CPUs once connected: the tasks kept in flight are twice this
    started: bool = False  # this block started (and will shut down) the Ray it uses

    def connect(self) -> int:
        """Start or join Ray once (a Ray this process had already initialised is used as it
        is) and return the cluster's CPUs; says where the episodes run on stderr."""
        if self.cpus:
            return self.cpus
        ray = import_ray()
        if not ray.is_initialized():
            self._init(ray)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            raise RayClusterError(
                f"the Ray cluster {'at ' + self.address if self.address else 'here'} has no CPU for episodes: "
                "start its nodes with --num-cpus 1 or more"
            )
        self.cpus = cpus
        print(f"episodes run as Ray tasks on {self.where} ({cpus} CPUs)", file=sys.stderr, flush=True)
        return cpus

    @property
    def where(self) -> str:
        """The Ray this block uses, as messages name it."""
        return f"the Ray cluster at {self.address}" if self.address else "a local Ray"

    def _init(self, ray: Any) -> None:
        # A worker killed by Ray's memory monitor is retried once, as one that dies otherwise
        # (Ray's default retries those without end); the process that owns the tasks decides.
        os.environ.setdefault("RAY_task_oom_retries", "1")
        where = self.where
        try:
            ray.init(
                # "local": a new Ray here, never a cluster `ray start` left running on this machine
                address=self.address or "local",
                num_cpus=self.num_cpus if self.address is None else None,
                include_dashboard=False,
                logging_level=logging.WARNING,
                configure_logging=True,
                log_to_driver=True,
            )
        except ray.exceptions.AuthenticationError as error:
            raise RayClusterError(
                f"{where} refused this process's token ({error}). A cluster with token authentication "
                "needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN) here too"
            ) from None
        except (ConnectionError, ValueError, RuntimeError) as error:
            fix = (
                "`ray start --head` prints the address to pass, and `ray status --address ADDRESS` checks it"
                if self.address
                else "run `ray stop` if an old local Ray is left, or pass --ray-address to join a running one"
            )
            raise RayClusterError(f"could not start or join {where}: {error}. {fix}") from None
        self.started = True


_active: contextvars.ContextVar[RayRollouts | None] = contextvars.ContextVar("ray_rollouts", default=None)


def active() -> RayRollouts | None:
    """The Ray session of the innermost open ``ray_rollouts()`` block, or None (the pool runs)."""
    return _active.get()


def import_ray() -> Any:
    """The ``ray`` module, or a ``MissingDependencyError`` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(f"--ray needs Ray, which is not installed. {INSTALL}") from None
    return ray


@contextlib.contextmanager
def ray_rollouts(address: str | None = None, num_cpus: int | None = None) -> Iterator[RayRollouts]:
    """Send ``map_jobs``'s episodes to Ray inside the block.

    ``address`` None starts a local Ray here with ``num_cpus`` CPUs (default: Ray's count of this
    machine's) and shuts it down when the block ends; an address (``HOST:PORT``, or ``auto`` for
    the cluster this machine belongs to) joins an existing cluster and leaves it running. Ray is
    imported and the address checked when the block opens; Ray starts (or is joined) when the
    first map runs, and fails there, before any episode, when it cannot.
    """
    ray = import_ray()
    if address is not None:
        _check_reachable(address)
    session = RayRollouts(address, num_cpus)
    token = _active.set(session)
    try:
        yield session
    finally:
        _active.reset(token)
        if session.started:
            ray.shutdown()


def _check_reachable(address: str) -> None:
    """Refuse in seconds a ``HOST:PORT`` nothing listens on (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        if address != "auto":
            raise RayClusterError(
                f"--ray-address {address!r} is not HOST:PORT (or auto): `ray start --head` prints the address to pass"
            )
        return
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as error:
        raise RayClusterError(
            f"no Ray cluster answers at {address} ({error.strerror or error}): `ray start --head` prints the "
            "address to pass, and `ray status --address ADDRESS` checks it"
        ) from None


def describe_job(job: Any) -> str:
    """A job as its error names it: the episode's seed (and task) when it has them."""
    seed = getattr(job, "seed", None)
    if seed is None:
        return repr(job)[:200]
    task = getattr(job, "task", None)
    return f"the episode with seed {seed}" + (f" (task {task})" if task else "")


def ray_map(
    work: Callable[[Any, Any], Any],
    jobs: Iterable[Any],
    setup: Callable[..., Any],
    setup_args: tuple[Any, ...],
    what: str,
    session: RayRollouts,
) -> Iterator[Any]:
    """``work(setup(*setup_args), job)`` for each job as Ray tasks, results in job order (see the
    module's docstring for state, retries and cancelling)."""
    ray = import_ray()
    cpus = session.connect()
    remote = ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)(_run_job)
    # One key per map: a worker process reused by a later map builds that map's state afresh.
    key = uuid.uuid4().hex
    shared = ray.put((key, setup, setup_args, work))
    window = 2 * cpus
    pending: deque[tuple[Any, Any]] = deque()
    remaining = iter(jobs)
    try:
        for job in itertools.islice(remaining, window):
            pending.append((job, remote.remote(shared, job)))
        while pending:
            job, ref = pending[0]  # still cancelled on the way out while it is awaited
            result = _get(ray, ref, job, what)
            pending.popleft()
            for job in itertools.islice(remaining, 1):  # the next job starts before the caller works
                pending.append((job, remote.remote(shared, job)))
            yield result
    finally:
        for _, ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


def _get(ray: Any, ref: Any, job: Any, what: str) -> Any:
    """``ray.get(ref)``: the work's own exception raised as itself; a worker that died twice on
    this job as a ``WorkerError`` naming it."""
    exceptions = ray.exceptions
    try:
        return ray.get(ref)
    except exceptions.RayTaskError as error:
        cause = error.cause
        if isinstance(cause, BaseException):
            if hasattr(cause, "add_note"):  # where it happened: the remote traceback is Ray's
                cause.add_note(f"(raised in the Ray worker running {describe_job(job)})")
            raise cause from None
        raise
    except exceptions.RayError as error:  # the worker died (crashed, killed, out of memory, node lost)
        kind = type(error).__name__
        raise WorkerError(
            f"the Ray worker running {describe_job(job)} of this {what} died twice ({kind}: killed, out of "
            "memory, or its node was lost); it was retried once and nothing more is retried. What finished "
            "before it is kept; run without --ray to see the error in this process"
        ) from None


# The state ``setup`` built in this Ray worker process, for the map whose key it holds.
_worker_state: dict[str, Any] = {}


def in_ray_worker() -> bool:
    """True inside a Ray task started by ``ray_map`` (its setup runs there)."""
    return bool(_worker_state.get("inside"))


def _run_job(
    shared: tuple[str, Callable[..., Any], tuple[Any, ...], Callable[[Any, Any], Any]], job: Any
) -> Any:
    key, setup, setup_args, work = shared
    _worker_state["inside"] = True
    if _worker_state.get("key") != key:
        _worker_state.pop("state", None)  # the last map's env and agent go before this one's are built
        _worker_state["state"] = setup(*setup_args)
        _worker_state["key"] = key
    return work(_worker_state["state"], job)
