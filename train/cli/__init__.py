"""The ``instructcraft`` command line. Every flag maps to one argument of the function it runs."""

# One module per thing a user does, each command a parser beside its handler:
#   data.py        collect, data info|check, import minerl|vpt|minari, export minari
#   training.py    bc, dagger, rl, ablate, demo
#   inspection.py  eval, rollout, attention
#   misc.py        envs, bench
#   common.py      argparse types, shared flags, JSON output, errors -> exit codes
# A new command: an ``add_<command>_parser(subparsers)`` that sets ``func=run_<command>`` in the
# module of its group, and its place in COMMANDS (the order ``instructcraft --help`` lists).

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from train.cli import data, inspection, misc, training
from train.cli.common import non_negative_int, positive_int, run_command, use_defaults_formatter

__all__ = ["COMMANDS", "build_parser", "main", "non_negative_int", "positive_int"]

COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    misc.add_envs_parser,
    data.add_collect_parser,
    data.add_data_parser,
    data.add_import_parser,
    data.add_export_parser,
    misc.add_bench_parser,
    training.add_bc_parser,
    training.add_dagger_parser,
    training.add_rl_parser,
    training.add_ablate_parser,
    inspection.add_eval_parser,
    inspection.add_rollout_parser,
    inspection.add_attention_parser,
    training.add_demo_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructcraft", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_parser in COMMANDS:
        add_parser(subparsers)
    use_defaults_formatter(parser)  # every command's --help shows its defaults
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)
