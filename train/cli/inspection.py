"""Looking at a trained checkpoint: ``eval`` (success rates), ``rollout`` (videos and stats) and
``attention`` (what the policy looked at)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from train.cli import common
from train.errors import SettingError

if TYPE_CHECKING:
    from agent.evaluate import EvaluationInterrupted


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint in an env (samples actions unless --greedy)",
        description="Evaluate a checkpoint in an env: success per task with 95% intervals. Actions are "
        "sampled from the policy (seeded per episode) unless --greedy; rollout and attention take the "
        "most likely action by default.",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint", help="checkpoint directory (config.json + model.safetensors)")
    who.add_argument(
        "--expert",
        default=None,
        help="expert name (crafter_planner, crafter_view_planner, babyai_bot) to act instead of a checkpoint "
        "on the same episodes: its success, its correct - swapped gap (--sensitivity runs correct and "
        "swapped) or a plan's score with a perfect follower (docs/training.md#evaluation)",
    )
    p.add_argument("--env", required=True, help="env id")
    p.add_argument("--episodes", type=common.positive_int, default=50, help="episodes per instruction mode")
    common.add_tasks_flag(p)
    p.add_argument(
        "--instruction-mode",
        choices=["correct", "swapped", "blank"],
        default="correct",
        help="the instruction the agent is given: the task's own (correct), another task's (swapped) "
        "or none, the learned null instruction (blank)",
    )
    p.add_argument(
        "--sensitivity", action="store_true", help="run correct, swapped and blank and report the gaps"
    )
    _add_cfg_scale_flag(p)
    p.add_argument(
        "--phrasings",
        default=None,
        help="JSON {task: [instruction, ...]}: judge each instruction against its task on the same "
        "--episodes seeds per task as the trained phrasings, and report new / trained success",
    )
    common.add_seed_flag(p, 100_000, "episode i uses seed + i")
    common.add_workers_flag(p, help="episode worker processes")
    common.add_ray_flags(p)
    p.add_argument("--video-dir", default=None, help="write mp4 videos of the first episodes here")
    p.add_argument("--videos", type=common.non_negative_int, default=1, help="how many episodes to record")
    p.add_argument(
        "--greedy",
        action="store_true",
        help="take the most likely action (default: sample, seeded per episode)",
    )
    p.add_argument(
        "--plan",
        default=None,
        help="follow a plan instead of the env's instruction: a YAML/JSON file or an inline "
        "'collect wood; place a table; ...' (docs/plans.md)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="write per-episode results here: stats.jsonl in crafter's Recorder format (Crafter envs) "
        "and eval.json (what --json prints)",
    )
    common.add_json_flag(p, "print JSON (with per-episode results and, on the open-ended env, crafter_score)")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """Ctrl-C stops the episodes at once, prints the rates over the finished ones and exits 130
    (``EvaluationInterrupted``); the workers ignore it and are stopped by this process."""
    from tqdm import tqdm

    from agent.evaluate import EvaluationInterrupted, sensitivity_modes

    modes = list(sensitivity_modes(args.expert)) if args.sensitivity else [args.instruction_mode]
    plan = _read_plan(args)
    bars: list[Any] = []  # the bar starts with the first episode, after every check passed

    def progress(row: dict[str, Any]) -> None:
        if not bars:
            bars.append(tqdm(total=args.episodes * len(modes), unit="ep", desc="eval", dynamic_ncols=True))
        bars[0].update(1)
        bars[0].set_postfix(mode=row["mode"])

    try:
        with common.rollout_backend(args):
            result = _run_modes(args, modes, plan, progress)
    except EvaluationInterrupted as stopped:
        for bar in bars:
            bar.close()
        if args.out and stopped.finished:  # the finished episodes are kept, as a whole run's are
            _write_results(args.out, _interrupted_report(stopped))
        _print_interrupted(args, stopped)
        raise
    except KeyboardInterrupt:  # before the first episode: loading the checkpoint, checking the env
        for bar in bars:
            bar.close()
        raise EvaluationInterrupted(0, args.episodes * len(modes), []) from None
    for bar in bars:
        bar.close()
    if args.out:
        _write_results(args.out, result)
    _print_result(args, result)
    return 0


def _run_modes(args: argparse.Namespace, modes: list[str], plan: Any, progress: Any) -> dict[str, Any]:
    """The evaluation ``args`` asks for: phrasings, every mode (--sensitivity) or one mode."""
    from agent.evaluate import evaluate, sensitivity

    if args.phrasings:
        return _evaluate_phrasings(args, modes, progress)
    shared = common.same_named(
        args, "checkpoint", "expert", "tasks", "cfg_scale", "seed", "workers", "video_dir", "videos"
    )
    shared.update(deterministic=args.greedy, progress=progress)
    if args.sensitivity:
        return sensitivity(args.env, args.episodes, **shared)
    return evaluate(args.env, args.episodes, mode=args.instruction_mode, plan=plan, **shared)


def _read_plan(args: argparse.Namespace) -> Any:
    """``--plan``, read and checked before anything runs (it cannot combine with other modes)."""
    if args.plan is None:
        return None
    from agent.plan import Plan

    if args.sensitivity or args.phrasings or args.instruction_mode != "correct":
        raise SettingError(
            "--plan gives the agent its instructions: drop --sensitivity, --phrasings and --instruction-mode"
        )
    return Plan.from_arg(args.plan)


def _interrupted_report(stopped: EvaluationInterrupted) -> dict[str, Any]:
    """What ``--json`` prints and ``--out`` keeps of an interrupted ``eval``: the runs begun, each
    over its finished episodes."""
    return {
        "interrupted": True,
        "finished": stopped.finished,
        "planned": stopped.planned,
        "runs": stopped.results,
    }


def _write_results(out: str, result: dict[str, Any]) -> None:
    """``OUT/stats.jsonl`` (crafter's per-episode format, Crafter episodes only) and
    ``OUT/eval.json``, each written whole under a temporary name and renamed into place. An
    interrupted run (``_interrupted_report``) keeps its finished episodes the same way."""
    import json
    from pathlib import Path

    from agent.evaluate import stats_records
    from envs.crafter_score import STATS_FILE, write_stats
    from policies.files import describe_write_failure
    from train.errors import OutputWriteError
    from train.report import write_text

    folder = Path(out)
    runs = result.get("runs", [result])
    runs = runs.values() if isinstance(runs, dict) else runs
    rows = [row for run in runs for row in run.get("per_episode", [])]
    records = stats_records(rows)
    if records:
        # stderr: with --json, stdout carries only the JSON
        try:
            written = write_stats(folder / STATS_FILE, records)
        except OSError as error:
            raise OutputWriteError(
                describe_write_failure(error, folder / STATS_FILE, "no result of this run was written")
            ) from None
        print(f"wrote {written} ({len(records)} episodes)", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "eval.json", json.dumps(result, indent=2, allow_nan=False) + "\n")


def _print_result(args: argparse.Namespace, result: dict[str, Any]) -> None:
    from train.report import print_eval, print_phrasings, print_sensitivity

    if args.json:
        common.print_json(result)
    elif args.phrasings:
        print_phrasings(result)
    elif args.sensitivity:
        print_sensitivity(result)
    else:
        print_eval(result)


def _print_interrupted(args: argparse.Namespace, stopped: EvaluationInterrupted) -> None:
    """What an interrupted ``eval`` finished: each run begun, over its finished episodes."""
    from train.report import print_eval, print_phrasings

    if args.json:
        common.print_json(_interrupted_report(stopped))
        return
    for result in stopped.results:
        (print_phrasings if args.phrasings else print_eval)(result)


def _evaluate_phrasings(
    args: argparse.Namespace, modes: list[str], progress: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """``eval --phrasings``: new instructions against the trained ones, task by task."""
    from agent.evaluate import evaluate_phrasings, read_phrasings

    if args.expert:
        raise SettingError(
            "--phrasings measures how a policy reads new wordings; an expert reads no text: drop --expert or --phrasings"
        )
    phrasings = read_phrasings(args.phrasings, args.env)
    if args.sensitivity or args.tasks or args.video_dir:
        raise SettingError(
            "--phrasings picks its own tasks and modes: drop --sensitivity, --tasks and --video-dir"
        )
    per_task = 1 + max(len(texts) for texts in phrasings.values())
    modes[:] = ["phrasing"] * per_task  # the bar's total: episodes x (trained + new phrasings)
    return evaluate_phrasings(
        args.env,
        phrasings,
        args.episodes,
        deterministic=args.greedy,
        progress=progress,
        **common.same_named(args, "checkpoint", "seed", "workers", "cfg_scale"),
    )


# What --env, --instruction and --task say in the commands that run a checkpoint in an env.
AGENT_FLAGS: dict[str, tuple[dict[str, Any], str, str]] = {
    "rollout": (
        {"required": True, "help": "env id"},
        "override the env's instruction",
        "default: the task of a known --instruction phrasing, else the env's draw per seed",
    ),
    "attention": (
        {"default": None, "help": "env id (for a rollout)"},
        "instruction (default: the env's)",
        "as for rollout; default from --instruction",
    ),
}


def _add_agent_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Which checkpoint acts, in which env, asked what, and which task judges its success."""
    env, instruction_help, task_default = AGENT_FLAGS[command]
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory")
    parser.add_argument("--env", **env)
    parser.add_argument("--instruction", default=None, help=instruction_help)
    parser.add_argument("--task", default=None, help=f"the task that judges success ({task_default})")


def _add_cfg_scale_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cfg-scale",
        type=common.non_negative_float,
        default=0.0,
        help="classifier-free guidance scale s >= 0 (0: none)",
    )


def _add_plan_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan",
        default=None,
        help="follow a plan instead of one instruction: a YAML/JSON file or an inline "
        "'collect wood; place a table; ...' (docs/plans.md)",
    )


def _plan_for(args: argparse.Namespace) -> Any:
    """``--plan`` read and checked before the checkpoint loads; it replaces ``--instruction``."""
    if args.plan is None:
        return None
    from agent.plan import Plan

    if args.instruction is not None:
        raise SettingError("--plan gives the agent its instructions: drop --instruction")
    return Plan.from_arg(args.plan)


def add_rollout_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rollout",
        help="roll a checkpoint out: captioned MP4/GIF per episode and JSON stats (greedy unless --sample)",
        description="Roll a checkpoint out: a captioned MP4/GIF per episode and JSON stats. The agent takes "
        "the most likely action (greedy) unless --sample, whereas eval samples by default: a rollout's "
        "success can differ from eval's on the same seeds.",
    )
    _add_agent_flags(p, "rollout")
    p.add_argument("--episodes", type=common.positive_int, default=1, help="episodes (seed, seed + 1, ...)")
    p.add_argument("--out", required=True, help="output directory")
    common.add_seed_flag(p, 0, "first episode seed")
    _add_cfg_scale_flag(p)
    p.add_argument(
        "--sample",
        action="store_true",
        help="sample actions, as eval does (default: greedy, the most likely action)",
    )
    _add_plan_flag(p)
    common.add_device_flag(p)
    common.add_json_flag(p, "print JSON")
    p.set_defaults(func=run_rollout)


def run_rollout(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agent import Agent
    from agent.rollout import judging_task, rollout

    plan = _plan_for(args)
    task, judged = judging_task(args.env, args.instruction, args.task)
    print(judged)
    agent = Agent.from_pretrained(args.checkpoint, device=args.device, seed=args.seed)
    bar = tqdm(total=args.episodes, unit="ep", desc="rollout", dynamic_ncols=True)
    try:
        stats = rollout(
            agent,
            args.env,
            args.out,
            task=task,
            plan=plan,
            deterministic=not args.sample,
            progress=lambda row: (
                bar.update(1),
                bar.set_postfix(success=row["success"], length=row["length"]),
            ),
            **common.same_named(args, "episodes", "seed", "instruction", "cfg_scale"),
        )
    except KeyboardInterrupt:
        bar.close()
        finished = bar.n
        kept = f"their videos and stats.json are in {args.out}" if finished else "nothing was written"
        print(f"interrupted after {finished} of {args.episodes} episodes: {kept}", file=sys.stderr)
        return 130
    bar.close()
    if args.json:
        common.print_json(stats)
    else:
        for row in stats["episodes"]:
            print(
                f"seed {row['seed']}: success={row['success']} length={row['length']} return={row['return']:.2f}  {row['mp4']}"
            )
        print(
            f"success {stats['success_rate']:.3f}, mean length {stats['mean_length']:.1f}; stats in {args.out}/stats.json"
        )
    return 0


def add_attention_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "attention",
        help="record attention over frames: timeline PNG, overlays PNG, HTML viewer (greedy actions)",
        description="Record attention over frames: timeline PNG, overlays PNG, HTML viewer. A rollout takes "
        "the most likely action at every step (greedy, unlike eval, which samples); --from-dataset "
        "replays the recorded actions instead.",
    )
    _add_agent_flags(p, "attention")
    p.add_argument("--out", required=True, help="output directory")
    common.add_seed_flag(p, 0, "episode seed")
    p.add_argument(
        "--max-steps", type=common.positive_int, default=None, help="stop the rollout after this many steps"
    )
    p.add_argument(
        "--from-dataset", default=None, help="replay a recorded demonstration instead of rolling out"
    )
    p.add_argument(
        "--episode", type=common.non_negative_int, default=0, help="episode index in --from-dataset"
    )
    _add_plan_flag(p)
    common.add_device_flag(p)
    p.set_defaults(func=run_attention)


def run_attention(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent import Agent
    from agent.attention import (
        open_dataset_episode,
        overlays_png,
        record_dataset_episode,
        record_rollout,
        timeline_png,
        viewer_html,
    )

    plan = _plan_for(args)
    if plan is not None and args.from_dataset:
        raise SettingError("--from-dataset replays a recorded episode's instruction: drop --plan")
    # The dataset's episode, or the env and task, are checked before the checkpoint loads.
    dataset: Any = None
    task: str | None = None
    if args.from_dataset:
        dataset = open_dataset_episode(args.from_dataset, args.episode)
    elif not args.env:
        raise SettingError("--env is required unless --from-dataset is given")
    else:
        from agent.rollout import judging_task

        task, judged = judging_task(args.env, args.instruction, args.task)
        print(judged)
    agent = Agent.from_pretrained(args.checkpoint, device=args.device, capture_attention=True)
    if dataset is not None:
        from envs import env_kind
        from envs.crafter_instruct import ACTION_NAMES

        env_id = args.env or dataset.metadata.get("env_id", "")
        names = list(ACTION_NAMES) if env_kind(env_id).family == "crafter" else None
        recording = record_dataset_episode(agent, args.from_dataset, args.episode, names)
    else:
        recording = record_rollout(
            agent, args.env, args.instruction, seed=args.seed, max_steps=args.max_steps, task=task, plan=plan
        )
    out = Path(args.out)
    last = len(recording) - 1
    written = {
        "timeline": timeline_png(recording, out / "timeline.png"),
        "overlays": overlays_png(recording, last, out / "overlays.png"),
        "viewer": viewer_html(recording, out / "viewer.html"),
    }
    print(f"{len(recording)} steps of {recording.fusion_type} attention for {recording.instruction!r}")
    for name, path in written.items():
        print(f"  {name:9s} {path}  ({path.stat().st_size / 1e3:.0f} kB)")
    return 0
