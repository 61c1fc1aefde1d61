"""Datasets in and out: ``collect``, ``data info|check|merge|upgrade``, ``import minerl|vpt|minari``,
``export minari``; and ``export hub``, a checkpoint out as a Hugging Face Hub model folder.

Length (about 470 lines): one parser beside its handler for each data command (collect, data
info/check/merge/upgrade, import, export).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from train.cli import common
from train.errors import SettingError


def add_collect_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("collect", help="collect expert demonstrations into a dataset")
    p.add_argument("--env", required=True, help="env id, e.g. instructcraft/Crafter-Instruct-v0")
    p.add_argument("--expert", default=None, help="expert name (default: the env's own expert)")
    p.add_argument("--episodes", type=common.positive_int, required=True, help="number of episodes")
    p.add_argument("--out", required=True, help="dataset directory (appended to if it exists)")
    common.add_tasks_flag(p)
    common.add_workers_flag(p)
    common.add_ray_flags(p)
    common.add_seed_flag(
        p, None, "episode i uses seed + i (default: after the highest seed already in --out, else 0)"
    )
    p.add_argument("--only-success", action="store_true", help="drop episodes the expert failed")
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="DART: execute a random action with this probability, record the expert's",
    )
    common.add_json_flag(p, "print statistics as JSON")
    p.set_defaults(func=run_collect)


def run_collect(args: argparse.Namespace) -> int:
    """Ctrl-C keeps every episode written so far (each is committed as it comes: the folder is a
    valid dataset), says how many in one line and exits 130."""
    from tqdm import tqdm

    from envs.data.collect import collect, next_seed, recorded_seeds
    from envs.experts import EXPERTS, default_expert_for
    from envs.workers import check_env_id

    check_env_id(args.env)
    expert = args.expert or default_expert_for(args.env)
    if expert not in EXPERTS:  # here, before a worker starts or --out is made
        raise SettingError(f"unknown --expert {expert!r}: the experts are {', '.join(sorted(EXPERTS))}")
    seed = next_seed(args.out) if args.seed is None else args.seed
    last = seed + args.episodes - 1
    recorded = recorded_seeds(args.out)
    if args.seed is None and recorded:
        note = f" (continuing after the highest recorded seed {recorded[-1]}; --seed sets the first)"
    elif repeated := [s for s in recorded if seed <= s <= last]:
        note = f" (note: {len(repeated)} of them are already recorded in {args.out}: those episodes repeat)"
    else:
        note = ""
    print(f"collecting {args.episodes} episodes with seeds {seed}..{last}{note}", file=sys.stderr)
    bar = tqdm(total=args.episodes, unit="ep", desc=f"collect {args.env}", dynamic_ncols=True)

    def progress(episode: Any, running: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(success=f"{running['success_rate']:.2f}", task=episode.task)

    before = _episode_count(args.out)
    try:
        with common.rollout_backend(args):
            stats = collect(
                args.out,
                args.env,
                expert,
                args.episodes,
                seed=seed,
                progress=progress,
                **common.same_named(args, "tasks", "workers", "only_success", "noise"),
            )
    except KeyboardInterrupt:
        bar.close()
        print(_interrupted_collect_line(args.out, before), file=sys.stderr)
        return 130
    bar.close()
    if args.json:
        common.print_json(stats)
    else:
        print(
            f"wrote {stats['kept']} episodes ({stats['kept_steps']} steps, seeds {seed}..{last}) to {stats['out']}: "
            f"expert success {stats['success_rate']:.3f}, {stats['episodes_per_s']:.1f} episodes/s"
        )
    return 0


def _episode_count(out: str) -> int:
    """The committed episodes in the dataset at ``out`` (0 when there is none yet)."""
    from pathlib import Path

    from envs.data.store import Dataset

    return len(Dataset(out)) if (Path(out) / "metadata.json").exists() else 0


def _interrupted_collect_line(out: str, before: int) -> str:
    """What an interrupted ``collect`` kept: the episodes committed before Ctrl-C."""
    total = _episode_count(out)
    if total == 0:
        return f"interrupted: no episode was written to {out}"
    return (
        f"interrupted: kept the {total - before} episode(s) written before Ctrl-C ({total} in {out}, a valid "
        "dataset); run collect again without --seed to continue after its highest seed"
    )


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="inspect, verify, merge or upgrade datasets",
        description="Inspect, verify, merge or upgrade datasets.",
    )
    # Each action its own parser: its own --help, and the other action's flags refused.
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    info_help = "episodes, steps, bytes, per-task success and length; exit 1 naming unreadable episodes"
    info = actions.add_parser("info", help=info_help, description=info_help)
    info.add_argument("path", help="dataset directory")
    common.add_json_flag(info, "print the summary as JSON")
    check_help = "verify every episode (checksums, shapes, dtypes, actions, rewards); exit 1 on any problem"
    check = actions.add_parser("check", help=check_help, description=check_help)
    check.add_argument("path", help="dataset directory")
    check.add_argument(
        "--replay",
        action="store_true",
        help="also re-run every episode from its seed and executed actions and report the first "
        "step whose frame, reward or flags differ",
    )
    merge_help = (
        "merge datasets of one env (collected on several machines) into one; the inputs are only read"
    )
    merge = actions.add_parser("merge", help=merge_help, description=merge_help)
    merge.add_argument(
        "inputs", nargs="+", metavar="DATASET", help="dataset directories, merged in this order"
    )
    merge.add_argument(
        "--out",
        required=True,
        help="dataset directory to write: a new or empty folder, or an existing dataset to append to",
    )
    merge.add_argument(
        "--allow-duplicate-seeds",
        action="store_true",
        help="merge even when an episode seed is recorded more than once (the episodes repeat)",
    )
    common.add_json_flag(merge, "print the summary as JSON")
    upgrade_help = (
        "convert a dataset of an older format version to the current one in place (crash-safe: "
        "run it again after an interruption)"
    )
    upgrade = actions.add_parser("upgrade", help=upgrade_help, description=upgrade_help)
    upgrade.add_argument("path", help="dataset directory")
    common.add_json_flag(upgrade, "print what was done as JSON")
    p.set_defaults(func=run_data)


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"dataset      {summary['path']}  (format v{summary['format_version']})")
    print(f"env          {summary['env_id']}")
    print(f"episodes     {summary['episodes']}   steps {summary['steps']}   bytes {summary['bytes']:,}")
    print(f"images       {tuple(summary['image_shape'])}   actions {summary['action_space']}")
    print(f"instructions {summary['instructions']} distinct")
    print(f"{'task':22s} {'episodes':>8s} {'success':>8s} {'mean len':>9s}")
    for task, row in sorted(summary["tasks"].items()):
        rate = "unknown" if row["success_rate"] is None else f"{row['success_rate']:.3f}"
        if row.get("unknown") and row["success_rate"] is not None:
            rate += "*"  # over the episodes whose outcome is known
        print(f"{task:22s} {row['episodes']:8d} {rate:>8s} {row['mean_length']:9.1f}")
    if any(row.get("unknown") for row in summary["tasks"].values()):
        print("* success over the episodes whose outcome is known; the others have no success signal")


def _unreadable_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for kind, numbers in summary["unreadable"].items():
        if numbers:
            shown = ", ".join(map(str, numbers[:10])) + (" ..." if len(numbers) > 10 else "")
            lines.append(f"{len(numbers)} episode(s) with {kind} files (counted above): {shown}")
    if lines:
        lines.append(f"run `instructcraft data check {summary['path']}` for details")
    return lines


def run_data(args: argparse.Namespace) -> int:
    from envs.data.store import Dataset, DatasetError

    if args.action == "merge":
        return run_merge(args)
    if args.action == "upgrade":
        return run_upgrade(args)
    try:
        dataset = Dataset(args.path)
        if args.action == "info":
            summary = dataset.summary()
            common.print_json(summary) if args.json else _print_summary(summary)
            warnings = _unreadable_lines(summary)
            for line in warnings:
                print(f"warning: {line}", file=sys.stderr)
            return 1 if warnings else 0
        problems = dataset.check()
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in dataset.orphans():
        print(f"note: {path} is not in index.jsonl (left by an interrupted write; safe to delete)")
    for path in dataset.foreign():
        print(f"note: {path} was not written by instructcraft (not part of the dataset; left alone)")
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    print(f"ok: {len(dataset)} episodes, {dataset.num_steps} steps verified in {args.path}")
    return _replay(args.path) if args.replay else 0


def run_upgrade(args: argparse.Namespace) -> int:
    """A refusal (not a dataset, a writer holds it) exits 2 with nothing changed; an interrupted
    upgrade leaves a readable dataset, and running it again finishes the job."""
    from envs.data.store import DatasetError
    from envs.data.upgrade import upgrade_dataset

    try:
        summary = upgrade_dataset(args.path)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        common.print_json(summary)
    elif summary["upgraded"]:
        how = f"{summary['linked']} linked" + (f", {summary['copied']} copied" if summary["copied"] else "")
        print(
            f"upgraded {args.path} from format version {summary['from_version']} to {summary['to_version']}: "
            f"{summary['episodes']} episode files in sub-folders of episodes/ ({how})"
        )
    else:
        finished = (
            summary["linked"]
            + summary["copied"]
            + summary["index_lines_renamed"]
            + summary["old_names_removed"]
        )
        note = " (finished an upgrade that was stopped midway)" if finished else ""
        print(f"{args.path} is already at format version {summary['to_version']}: nothing to upgrade{note}")
    return 0


def _replay(path: str) -> int:
    """``data check --replay``: re-run every recorded episode; 1 when any differs."""
    from envs.replay import replay_dataset

    results = replay_dataset(path)
    differ = [r for r in results if not r.ok and not r.skipped]
    for result in results:
        if not result.ok:
            print(result)
    replayed = sum(1 for r in results if not r.skipped)
    print(f"replay: {replayed - len(differ)} of {replayed} replayed episodes identical", end="")
    print(f" ({len(results) - replayed} not replayable)" if replayed < len(results) else "")
    return 1 if differ else 0


def run_merge(args: argparse.Namespace) -> int:
    """A refusal (other env or settings, duplicate seeds, a bad input) exits 2 with nothing
    written; Ctrl-C keeps the episodes merged so far (a valid dataset), says so and exits 130."""
    from tqdm import tqdm

    from envs.data.merge import merge_datasets

    bars: dict[str, Any] = {}

    def close_bars() -> None:
        for bar in bars.values():
            bar.close()

    def progress(phase: str, done: int, total: int) -> None:
        """One bar per phase: checking the inputs, then merging."""
        if phase not in bars:
            close_bars()
            what = "check inputs" if phase == "check" else f"merge into {args.out}"
            bars[phase] = tqdm(total=total, unit="ep", desc=what, dynamic_ncols=True, disable=args.json)
        bars[phase].update(done - bars[phase].n)

    before = _episode_count(args.out)
    try:
        summary = merge_datasets(
            args.inputs, args.out, allow_duplicate_seeds=args.allow_duplicate_seeds, progress=progress
        )
    except KeyboardInterrupt:
        close_bars()
        print(_interrupted_merge_line(args.out, before), file=sys.stderr)
        return 130
    finally:
        close_bars()
    if args.json:
        common.print_json(summary)
    else:
        appended = f", after its {summary['appended_to']} earlier episodes" if summary["appended_to"] else ""
        print(
            f"merged {summary['episodes']} episodes ({summary['steps']} steps) from {len(args.inputs)} "
            f"dataset(s) into {summary['out']}{appended} (episodes re-encoded by the dataset writer)"
        )
    return 0


def _interrupted_merge_line(out: str, before: int) -> str:
    """What an interrupted ``data merge`` kept: the episodes committed before Ctrl-C."""
    merged = _episode_count(out) - before
    if merged == 0:
        return f"interrupted: no episode was merged into {out}"
    if before:
        return (
            f"interrupted: {out} keeps its {before} earlier episodes and the {merged} merged before Ctrl-C "
            f"(episodes {before}..{before + merged - 1}; a valid dataset); the rest were not merged"
        )
    return (
        f"interrupted: kept the {merged} episode(s) merged before Ctrl-C in {out} (a valid dataset); "
        f"to finish, delete {out} and run the same merge again"
    )


IMPORT_HELP = {
    "minerl": "MineRL v0.4 demonstrations (ROOT/<EnvName>/<stream>/) to a native dataset",
    "vpt": "OpenAI VPT contractor recordings (a directory of .mp4 + .jsonl) to a native dataset",
    "minari": "a Minari dataset (the minari extra) to a native dataset",
}


def add_import_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import",
        help="convert MineRL v0.4, VPT or Minari demonstrations to a native dataset",
        description="Convert MineRL v0.4, VPT or Minari demonstrations to a native dataset.",
    )
    # Each source its own parser: its own --help, and the other sources' flags refused.
    sources = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    minerl = sources.add_parser("minerl", help=IMPORT_HELP["minerl"], description=IMPORT_HELP["minerl"])
    minerl.add_argument("path", metavar="ROOT", help="MineRL data root: ROOT/<EnvName>/<stream>/")
    minerl.add_argument(
        "--env", nargs="+", default=None, help="only these env names, e.g. MineRLTreechop-v0 (default: all)"
    )
    minerl.add_argument("--allow-pickle", action="store_true", help="load object arrays (trusted files only)")
    vpt = sources.add_parser("vpt", help=IMPORT_HELP["vpt"], description=IMPORT_HELP["vpt"])
    vpt.add_argument("path", metavar="DIR", help="a directory of .mp4 + .jsonl recordings")
    vpt.add_argument("--instruction", default="play minecraft", help="the episodes' instruction")
    vpt.add_argument(
        "--size", type=common.positive_int, nargs=2, default=[64, 64], metavar=("H", "W"), help="frame size"
    )
    minari = sources.add_parser("minari", help=IMPORT_HELP["minari"], description=IMPORT_HELP["minari"])
    minari.add_argument("path", metavar="ID", help="Minari dataset id")
    minari.add_argument(
        "--instruction",
        default=None,
        help="the episodes' instruction where the observations carry none (default: the observations' own)",
    )
    for source in (minerl, vpt):
        source.add_argument(
            "--camera-bins",
            type=common.positive_int,
            default=11,
            help="camera bins per axis (odd; VPT uses 11)",
        )
    for source in (minerl, vpt, minari):
        source.add_argument("--out", required=True, help="native dataset directory to write")
        common.add_json_flag(source)
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    bar = tqdm(unit="ep", desc=f"import {args.source}", dynamic_ncols=True, disable=args.json)

    def progress(episode: Any) -> None:
        bar.update(1)
        bar.set_postfix(task=episode.task, steps=episode.length)

    if args.source == "minerl":
        from envs.data.importers import import_minerl

        summary = import_minerl(
            args.path,
            args.out,
            env_names=args.env,
            camera_bins=args.camera_bins,
            allow_pickle=args.allow_pickle,
            progress=progress,
        )
    elif args.source == "vpt":
        from envs.data.importers import import_vpt

        summary = import_vpt(
            args.path,
            args.out,
            instruction=args.instruction,
            size=tuple(args.size),
            camera_bins=args.camera_bins,
            progress=progress,
        )
    else:
        from envs.data.minari import import_minari

        summary = import_minari(args.path, args.out, instruction=args.instruction)
    bar.close()
    if args.json:
        common.print_json(summary)
    else:
        print(f"imported {summary['episodes']} episodes, {summary['steps']} steps into {args.out}")
    return 0


EXPORT_HELP = {
    "minari": "a native dataset to a Minari dataset (the minari extra)",
    "hub": "a checkpoint to a folder to upload to the Hugging Face Hub (weights, config, model card)",
}


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a native dataset as Minari, or a checkpoint as a Hugging Face Hub model folder",
        description="Write a native dataset as Minari, or a checkpoint as a Hugging Face Hub model folder.",
    )
    # Each target its own parser, as `import` does: its own --help, the other's flags refused.
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    minari = targets.add_parser("minari", help=EXPORT_HELP["minari"], description=EXPORT_HELP["minari"])
    minari.add_argument("data", help="native dataset directory")
    minari.add_argument("--id", required=True, help="Minari dataset id, e.g. instructcraft/crafter-v0")
    hub = targets.add_parser("hub", help=EXPORT_HELP["hub"], description=EXPORT_HELP["hub"])
    hub.add_argument("checkpoint", metavar="DIR", help="a run folder, its checkpoint/ or pretrained:<name>")
    hub.add_argument("--out", required=True, help="folder to write (new or empty): upload it as user/name")
    hub.add_argument(
        "--eval",
        default=None,
        metavar="FILE",
        help="an eval.json (`instructcraft eval --out`) whose results the model card reports "
        "(default: the checkpoint's card.json, if any)",
    )
    for target in (minari, hub):
        common.add_json_flag(target)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    if args.target == "hub":
        from train.export_hub import export_hub

        summary = export_hub(args.checkpoint, args.out, evaluation=args.eval)
        if args.json:
            common.print_json(summary)
        else:
            print(
                f"wrote {', '.join(summary['files'])} to {summary['out']}; upload it with "
                f'`hf upload user/name {summary["out"]}` and load it with Agent.from_pretrained("user/name")'
            )
        return 0
    from envs.data.minari import export_minari

    summary = export_minari(args.data, args.id)
    if args.json:
        common.print_json(summary)
    else:
        print(
            f"exported {summary['episodes']} episodes, {summary['steps']} steps as Minari dataset {args.id} "
            f"in {summary['path']}"
        )
    return 0
