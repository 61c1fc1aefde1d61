"""What every command shares: argparse types, the flags several commands take, JSON output, and
how a command's failure becomes an exit code."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

Handler = Callable[[argparse.Namespace], "int | None"]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` ends each flag's help with its default, so a run's hidden settings (episodes per
    round, beta, ...) are in plain sight. Left out where the help already says its default and
    where there is nothing to show: no default (None), an off switch (False) or an empty list."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def use_defaults_formatter(parser: argparse.ArgumentParser) -> None:
    """``DefaultsHelpFormatter`` for ``parser`` and every sub-parser below it."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_parser in action.choices.values():
                use_defaults_formatter(sub_parser)


def print_json(data: Any) -> None:
    """A command's ``--json`` output: strict JSON (a NaN or infinity prints as null)."""
    from train.report import print_json as print_strict

    print_strict(data)


def resolve_init(value: str | None) -> str | None:
    """``--init``'s checkpoint as a folder: a shipped agent (``pretrained:<name>``) or a hub id
    becomes the folder it names, as ``eval --checkpoint`` reads them; a path stays as given."""
    if value is None:
        return None
    from agent.pretrained import resolve_checkpoint

    return os.fspath(resolve_checkpoint(value))


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (episodes, steps, workers, sizes)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type for seeds, indices and optional counts (0 = none)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type for scales that must be finite and at least 0 (classifier-free guidance)."""
    value = float(text)
    if not value >= 0 or value == float("inf"):  # NaN fails the comparison
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def same_named(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags ``names`` as keyword arguments of the same names: a flag maps to one argument of
    the function it runs (one named otherwise is passed by hand)."""
    return {name: getattr(args, name) for name in names}


# Flags that mean the same in every command that takes them; the help text may say more.


def add_json_flag(parser: argparse.ArgumentParser, help: str = "print the summary as JSON") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_tasks_flag(
    parser: argparse.ArgumentParser, help: str = "Crafter-Instruct tasks to cycle through"
) -> None:
    parser.add_argument("--tasks", nargs="+", default=None, help=help)


class RecordGiven(argparse.Action):
    """Store the value and note the flag as given on the command line (``args.given``), so that a
    default can be told from the same number typed by hand."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def add_workers_flag(
    parser: argparse.ArgumentParser, default: int = 2, help: str = "worker processes"
) -> None:
    parser.add_argument("--workers", type=positive_int, default=default, action=RecordGiven, help=help)


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    """``--ray`` / ``--ray-address``: the episodes run as Ray tasks (``rollout_backend``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--ray",
        action="store_true",
        help="run the episodes as Ray tasks on a local Ray with --workers CPUs (not given: this "
        "machine's cores) instead of the process pool (the [ray] extra; same results)",
    )
    group.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="run the episodes as Ray tasks on the running Ray cluster at ADDRESS (HOST:PORT from "
        "`ray start --head`, or auto)",
    )


@contextlib.contextmanager
def rollout_backend(args: argparse.Namespace) -> Iterator[None]:
    """The block where a command's episodes run: the process pool (``--workers``), or Ray tasks
    when ``--ray`` or ``--ray-address`` is given (envs/ray_rollouts.py: Ray starts with the
    first episodes, after the command's checks, and says where they run on stderr)."""
    if not (args.ray or args.ray_address):
        yield
        return
    from train.errors import SettingError

    workers = args.workers if "workers" in getattr(args, "given", ()) else None
    if args.ray_address is not None and workers is not None:
        raise SettingError(
            f"--workers {workers} sizes the process pool or a local Ray (--ray); on a cluster "
            "(--ray-address) its CPUs decide how many episodes run at once: leave --workers out"
        )
    from envs.ray_rollouts import ray_rollouts
    from envs.workers import usable_cores

    local = args.ray_address is None
    with ray_rollouts(args.ray_address, num_cpus=(workers or usable_cores()) if local else None):
        yield


def add_seed_flag(parser: argparse.ArgumentParser, default: int | None, help: str) -> None:
    parser.add_argument("--seed", type=non_negative_int, default=default, help=help)


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, example: str) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE`` overrides (train.config.load_run_config)."""
    parser.add_argument("--config", default=None, help=config_help)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. {example}",
    )


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() here, or stdout is no file
        return False


def expected_errors() -> tuple[type[BaseException], ...]:
    """Every error of the project a user can act on, in one place: each package's root (envs
    and policies import nothing of ours, so no two packages share one class). Imported when an
    error arrives, so a command that succeeds never loads what it does not use."""
    from agent.errors import AgentError
    from envs.errors import EnvsError
    from policies.errors import PoliciesError
    from train.errors import TrainError

    return (EnvsError, PoliciesError, AgentError, TrainError)


def is_expected(error: BaseException) -> bool:
    """Whether ``error`` is one the user can act on: one of ``expected_errors``, or one of
    gymnasium's own (an unknown env id and the like). A plain ValueError, KeyError and the like
    is not: the code that raised it is a bug, and its traceback shows where."""
    return isinstance(error, expected_errors()) or type(error).__module__.startswith("gymnasium")


def run_command(handler: Handler, args: argparse.Namespace) -> int:
    """Run a command's handler; an expected error (``expected_errors``) prints one line and exits
    2 (or the error's own ``exit_code``); anything else is a bug and keeps its traceback."""
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
        return code
    except KeyboardInterrupt:
        # A command that keeps partial work says so itself and exits 130; this is for the rest.
        print(f"interrupted: {args.command} stopped before it finished", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_reader_gone():  # a worker's pipe, say: a real failure
            raise
        # e.g. `instructcraft envs | head -1`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    except Exception as error:
        if not is_expected(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)  # an interrupted run: 128 + the signal
