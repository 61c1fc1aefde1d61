"""The ``instructcraft`` command line. Every flag maps to one argument of the function it runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


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


def babyai_step_limit(env_id: str) -> int:
    """The level's own step limit (minigrid sets it on reset; it does not depend on the seed)."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.reset(seed=0)
    limit = int(env.unwrapped.unwrapped_level.max_steps)
    env.close()
    return limit


def cmd_envs(args: argparse.Namespace) -> int:
    import envs
    from envs.crafter_tasks import TASKS

    rows = []
    for env_id in envs.registered_ids():
        if env_id == envs.CRAFTER_ID:
            tasks = {
                name: {"phrasings": list(t.phrasings), "step_limit": t.step_limit}
                for name, t in TASKS.items()
            }
        elif env_id == envs.CRAFTER_OPEN_ID:
            from envs.crafter_instruct import OPEN_ENDED_INSTRUCTION, OPEN_ENDED_STEPS

            tasks = {"open_ended": {"phrasings": [OPEN_ENDED_INSTRUCTION], "step_limit": OPEN_ENDED_STEPS}}
        else:
            level = env_id.split("BabyAI-")[1].removesuffix("-v0")
            tasks = {level: {"phrasings": ["(the level's mission)"], "step_limit": babyai_step_limit(env_id)}}
        rows.append({"env_id": env_id, "tasks": tasks})
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        print(row["env_id"])
        for name, task in row["tasks"].items():
            limit = f"  (limit {task['step_limit']})" if "step_limit" in task else ""
            print(f"    {name:20s} {' | '.join(task['phrasings'])}{limit}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from envs.data.collect import collect, next_seed, recorded_seeds
    from envs.experts import default_expert_for
    from envs.workers import check_env_id

    check_env_id(args.env)
    expert = args.expert or default_expert_for(args.env)
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

    stats = collect(
        args.out,
        args.env,
        expert,
        args.episodes,
        tasks=args.tasks,
        workers=args.workers,
        seed=seed,
        only_success=args.only_success,
        noise=args.noise,
        progress=progress,
    )
    bar.close()
    if args.json:
        _print_json(stats)
    else:
        print(
            f"wrote {stats['kept']} episodes ({stats['steps']} steps, seeds {seed}..{last}) to {stats['out']}: "
            f"expert success {stats['success_rate']:.3f}, {stats['episodes_per_s']:.1f} episodes/s"
        )
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"dataset      {summary['path']}  (format v{summary['format_version']})")
    print(f"env          {summary['env_id']}")
    print(f"episodes     {summary['episodes']}   steps {summary['steps']}   bytes {summary['bytes']:,}")
    print(f"images       {tuple(summary['image_shape'])}   actions {summary['action_space']}")
    print(f"instructions {summary['instructions']} distinct")
    print(f"{'task':22s} {'episodes':>8s} {'success':>8s} {'mean len':>9s}")
    for task, row in sorted(summary["tasks"].items()):
        print(f"{task:22s} {row['episodes']:8d} {row['success_rate']:8.3f} {row['mean_length']:9.1f}")


def _unreadable_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for kind, numbers in summary["unreadable"].items():
        if numbers:
            shown = ", ".join(map(str, numbers[:10])) + (" ..." if len(numbers) > 10 else "")
            lines.append(f"{len(numbers)} episode(s) with {kind} files (counted above): {shown}")
    if lines:
        lines.append(f"run `instructcraft data check {summary['path']}` for details")
    return lines


def cmd_data(args: argparse.Namespace) -> int:
    from envs.data.store import Dataset, DatasetError

    try:
        dataset = Dataset(args.path)
        if args.action == "info":
            summary = dataset.summary()
            _print_json(summary) if args.json else _print_summary(summary)
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
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    print(f"ok: {len(dataset)} episodes, {dataset.num_steps} steps verified in {args.path}")
    if args.replay:
        from envs.replay import replay_dataset

        results = replay_dataset(args.path)
        differ = [r for r in results if not r.ok and not r.skipped]
        for result in results:
            if not result.ok:
                print(result)
        replayed = sum(1 for r in results if not r.skipped)
        print(f"replay: {replayed - len(differ)} of {replayed} replayed episodes identical", end="")
        print(f" ({len(results) - replayed} not replayable)" if replayed < len(results) else "")
        return 1 if differ else 0
    return 0


def cmd_import(args: argparse.Namespace) -> int:
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
            instruction=args.instruction or "play minecraft",
            size=tuple(args.size),
            camera_bins=args.camera_bins,
            progress=progress,
        )
    else:
        from envs.data.minari import import_minari

        summary = import_minari(args.path, args.out, instruction=args.instruction)
    bar.close()
    if args.json:
        _print_json(summary)
    else:
        print(f"imported {summary['episodes']} episodes, {summary['steps']} steps into {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from envs.data.minari import export_minari

    summary = export_minari(args.data, args.id)
    if args.json:
        _print_json(summary)
    else:
        print(
            f"exported {summary['episodes']} episodes, {summary['steps']} steps as Minari dataset {args.id} "
            f"in {summary['path']}"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from train.bench import BENCHES

    results = BENCHES[args.what](args.quick)
    if args.json:
        _print_json(results)
    else:
        for key, value in results.items():
            print(f"{key:36s} {value:.4g}" if isinstance(value, float) else f"{key:36s} {value}")
    return 0


def cmd_bc(args: argparse.Namespace) -> int:
    from train.bc import train_bc
    from train.config import load_run_config
    from train.periodic_eval import periodic_evaluator

    skip = ["train.skip_bad_episodes=true"] if args.skip_bad_episodes else []
    run = load_run_config(args.config, [*args.set, *skip])
    summary = train_bc(
        run,
        args.data,
        args.out,
        resume=args.resume,
        evaluate_fn=periodic_evaluator(run, args.data),
        init=args.init,
    )
    if summary is None:
        return 0
    if args.json:
        _print_json(summary)
    else:
        print(
            f"trained {summary['steps']} steps, final loss {summary['final_loss']:.4f}; checkpoint {summary['checkpoint']}"
        )
        for row in summary["evaluations"]:
            print(f"  eval at step {row['step']}: success {row['success_rate']:.3f}")
    return 0


def cmd_dagger(args: argparse.Namespace) -> int:
    from envs.experts import default_expert_for
    from train.config import load_run_config
    from train.dagger import DaggerConfig, run_dagger

    run = load_run_config(args.config, args.set)
    dagger = DaggerConfig(
        rounds=args.rounds,
        episodes=args.episodes,
        beta=args.beta,
        beta_decay=args.beta_decay,
        steps=args.steps_per_round,
        eval_episodes=args.eval_episodes,
        workers=args.workers,
    )
    state = run_dagger(
        run,
        dagger,
        args.data,
        args.out,
        args.env,
        args.expert or default_expert_for(args.env),
        tasks=args.tasks,
        init=args.init,
        resume=args.resume,
    )
    if args.json:
        _print_json(state)
    else:
        for entry in state["rounds"]:
            shown = f"success {entry['success']:.3f}" if "success" in entry else "not evaluated"
            print(f"round {entry['round']}: {shown}, dataset {entry['dataset_episodes']} episodes")
        print(f"checkpoint {state['checkpoint']}")
    return 0


def cmd_rl(args: argparse.Namespace) -> int:
    from train.config import load_run_config
    from train.rl import train_rl

    run = load_run_config(args.config, args.set)
    env_kwargs = {"task": args.tasks} if args.tasks else {}
    summary = train_rl(
        run,
        args.env,
        args.steps,
        args.out,
        init=args.init,
        resume=args.resume,
        env_kwargs=env_kwargs,
        progress=not args.json,
    )
    if args.json:
        _print_json(summary)
    else:
        print(
            f"PPO {summary['timesteps']} env steps at {summary['steps_per_s']:.1f} steps/s; "
            f"checkpoint {summary['checkpoint']}"
        )
        for task, rate in summary["success_rate_per_task"].items():
            print(f"  {task:24s} success {rate:.3f} (last episodes)")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from policies import FUSIONS
    from train.ablate import ablate

    fusions = [name.strip() for name in args.fusion.split(",") if name.strip()]
    unknown = [name for name in fusions if name not in FUSIONS]
    if unknown:
        raise ValueError(f"unknown fusion type(s) {unknown}; known: {sorted(FUSIONS)}")
    summary = ablate(
        fusions,
        args.data,
        args.out,
        config=args.config,
        overrides=args.set,
        seeds=args.seeds,
        episodes=args.episodes,
        eval_env=args.env,
        tasks=args.tasks,
        rl_steps=args.rl_steps,
        workers=args.workers,
        log=(lambda _: None) if args.json else print,
    )
    if args.json:
        _print_json(summary)
    else:
        print((Path(args.out) / "ablation.md").read_text())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agent.evaluate import MODES, evaluate, sensitivity
    from train.report import print_eval, print_phrasings, print_sensitivity

    common = dict(
        checkpoint=args.checkpoint,
        tasks=args.tasks,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
        workers=args.workers,
        video_dir=args.video_dir,
        videos=args.videos,
        deterministic=args.greedy,
    )
    modes = list(MODES) if args.sensitivity else [args.instruction_mode]
    bars: list[Any] = []  # the bar starts with the first episode, after every check passed

    def progress(row: dict[str, Any]) -> None:
        if not bars:
            bars.append(tqdm(total=args.episodes * len(modes), unit="ep", desc="eval", dynamic_ncols=True))
        bars[0].update(1)
        bars[0].set_postfix(mode=row["mode"])

    common["progress"] = progress
    if args.phrasings:
        from agent.evaluate import evaluate_phrasings, read_phrasings

        phrasings = read_phrasings(args.phrasings, args.env)
        if args.sensitivity or args.tasks or args.video_dir:
            raise ValueError(
                "--phrasings picks its own tasks and modes: drop --sensitivity, --tasks and --video-dir"
            )
        per_task = 1 + max(len(texts) for texts in phrasings.values())
        modes[:] = ["phrasing"] * per_task  # the bar's total: episodes x (trained + new phrasings)
        result = evaluate_phrasings(
            args.env,
            phrasings,
            args.episodes,
            checkpoint=args.checkpoint,
            seed=args.seed,
            workers=args.workers,
            cfg_scale=args.cfg_scale,
            deterministic=args.greedy,
            progress=progress,
        )
        for bar in bars:
            bar.close()
        if args.json:
            _print_json(result)
        else:
            print_phrasings(result)
        return 0
    if args.sensitivity:
        result = sensitivity(args.env, args.episodes, **common)
    else:
        result = evaluate(args.env, args.episodes, mode=args.instruction_mode, **common)
    for bar in bars:
        bar.close()
    if args.json:
        _print_json(result)
    elif args.sensitivity:
        print_sensitivity(result)
    else:
        print_eval(result)
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agent import Agent
    from agent.rollout import judging_task, rollout

    task, judged = judging_task(args.env, args.instruction, args.task)
    print(judged)
    agent = Agent.from_pretrained(args.checkpoint, device=args.device, seed=args.seed)
    bar = tqdm(total=args.episodes, unit="ep", desc="rollout", dynamic_ncols=True)
    stats = rollout(
        agent,
        args.env,
        args.out,
        episodes=args.episodes,
        seed=args.seed,
        instruction=args.instruction,
        task=task,
        deterministic=not args.sample,
        cfg_scale=args.cfg_scale,
        progress=lambda row: (bar.update(1), bar.set_postfix(success=row["success"], length=row["length"])),
    )
    bar.close()
    if args.json:
        _print_json(stats)
    else:
        for row in stats["episodes"]:
            print(
                f"seed {row['seed']}: success={row['success']} length={row['length']} return={row['return']:.2f}  {row['mp4']}"
            )
        print(
            f"success {stats['success_rate']:.3f}, mean length {stats['mean_length']:.1f}; stats in {args.out}/stats.json"
        )
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent import Agent
    from agent.attention import (
        overlays_png,
        record_dataset_episode,
        record_rollout,
        timeline_png,
        viewer_html,
    )

    agent = Agent.from_pretrained(args.checkpoint, device=args.device, capture_attention=True)
    if args.from_dataset:
        from envs.crafter_instruct import ACTION_NAMES

        names = list(ACTION_NAMES) if "Crafter" in (args.env or "Crafter") else None
        recording = record_dataset_episode(agent, args.from_dataset, args.episode, names)
    else:
        if not args.env:
            raise ValueError("--env is required unless --from-dataset is given")
        from agent.rollout import judging_task

        task, judged = judging_task(args.env, args.instruction, args.task)
        print(judged)
        recording = record_rollout(
            agent, args.env, args.instruction, seed=args.seed, max_steps=args.max_steps, task=task
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


def cmd_demo(args: argparse.Namespace) -> int:
    from train.demo import run_demo

    return run_demo(
        args.out,
        episodes=args.episodes,
        workers=args.workers,
        seed=args.seed,
        bc_steps=args.bc_steps,
        eval_episodes=args.eval_episodes,
        tasks=args.tasks,
    )


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, example: str) -> None:
    parser.add_argument("--config", default=None, help=config_help)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. {example}",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructcraft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("envs", help="list env ids and their tasks")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_envs)

    p = sub.add_parser("collect", help="collect expert demonstrations into a dataset")
    p.add_argument("--env", required=True, help="env id, e.g. instructcraft/Crafter-Instruct-v0")
    p.add_argument("--expert", default=None, help="expert name (default: the env's own expert)")
    p.add_argument("--episodes", type=positive_int, required=True, help="number of episodes")
    p.add_argument("--out", required=True, help="dataset directory (appended to if it exists)")
    p.add_argument("--tasks", nargs="+", default=None, help="Crafter-Instruct tasks to cycle through")
    p.add_argument("--workers", type=positive_int, default=2, help="worker processes")
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=None,
        help="episode i uses seed + i (default: after the highest seed already in --out, else 0)",
    )
    p.add_argument("--only-success", action="store_true", help="drop episodes the expert failed")
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="DART: execute a random action with this probability, record the expert's",
    )
    p.add_argument("--json", action="store_true", help="print statistics as JSON")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("data", help="inspect or verify a dataset")
    p.add_argument("action", choices=["info", "check"])
    p.add_argument("path", help="dataset directory")
    p.add_argument("--json", action="store_true", help="print JSON (info)")
    p.add_argument(
        "--replay",
        action="store_true",
        help="check: also re-run every episode from its seed and executed actions and report the first "
        "step whose frame, reward or flags differ",
    )
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("import", help="convert MineRL v0.4, VPT or Minari demonstrations to a native dataset")
    p.add_argument("source", choices=["minerl", "vpt", "minari"])
    p.add_argument(
        "path", help="minerl: ROOT/<EnvName>/<stream>/; vpt: a directory of .mp4 + .jsonl; minari: dataset id"
    )
    p.add_argument("--out", required=True, help="native dataset directory to write")
    p.add_argument(
        "--env", nargs="+", default=None, help="minerl: only these env names (e.g. MineRLTreechop-v0)"
    )
    p.add_argument(
        "--camera-bins", type=positive_int, default=11, help="camera bins per axis (odd; VPT uses 11)"
    )
    p.add_argument(
        "--allow-pickle", action="store_true", help="minerl: load object arrays (trusted files only)"
    )
    p.add_argument("--instruction", default=None, help="vpt/minari: the episodes' instruction")
    p.add_argument(
        "--size", type=positive_int, nargs=2, default=[64, 64], metavar=("H", "W"), help="vpt: frame size"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="write a native dataset in another format (Minari)")
    p.add_argument("target", choices=["minari"])
    p.add_argument("data", help="native dataset directory")
    p.add_argument("--id", required=True, help="Minari dataset id, e.g. instructcraft/crafter-v0")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="run a benchmark; prints side-by-side ratios")
    p.add_argument("what", choices=["env", "policy", "bc", "attention", "rl"])
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quick", action="store_true", help="smaller budgets (smoke runs)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bc", help="behavioral cloning on a dataset (works under torchrun)")
    add_config_arguments(p, "YAML or JSON run config ({policy: ..., train: ...})", "train.lr=3e-4")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--out", required=True, help="output directory (checkpoint/, tb/, config.resolved.yaml)")
    p.add_argument("--resume", default=None, help="checkpoint (or run) directory to continue from")
    p.add_argument(
        "--init", default=None, help="start from a checkpoint's weights (fresh optimizer): fine-tuning"
    )
    p.add_argument(
        "--skip-bad-episodes",
        action="store_true",
        help="train on the readable episodes when some are missing or corrupt (train.skip_bad_episodes)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_bc)

    p = sub.add_parser(
        "dagger",
        help="DAgger: roll the policy out, the expert labels every visited state, aggregate, retrain",
    )
    add_config_arguments(
        p, "YAML or JSON run config ({policy: ..., train: ...}) for round 0", "train.steps=700"
    )
    p.add_argument("--data", required=True, help="demonstrations to start from (copied into OUT/data)")
    p.add_argument("--env", required=True, help="env id the rollouts run in")
    p.add_argument(
        "--out", required=True, help="output directory (data/, round_NN/, checkpoint/, tb/, dagger.json)"
    )
    p.add_argument("--expert", default=None, help="expert that labels (default: the env's default expert)")
    p.add_argument("--tasks", nargs="+", default=None, help="Crafter-Instruct tasks to cycle through")
    p.add_argument("--init", default=None, help="round-0 policy: a checkpoint instead of BC on --data")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds after round 0")
    p.add_argument("--episodes", type=positive_int, default=200, help="labelled rollouts per round")
    p.add_argument("--beta", type=float, default=0.5, help="P(execute the expert's action) in round 1")
    p.add_argument("--beta-decay", type=float, default=0.5, help="beta is multiplied by this every round")
    p.add_argument("--steps-per-round", type=positive_int, default=400, help="BC fine-tuning steps per round")
    p.add_argument(
        "--eval-episodes", type=non_negative_int, default=40, help="learner-only evaluation per round"
    )
    p.add_argument("--workers", type=positive_int, default=2, help="rollout and evaluation processes")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_dagger)

    p = sub.add_parser("rl", help="PPO (stable-baselines3) on the fusion policy, from scratch or from BC")
    add_config_arguments(p, "YAML or JSON run config ({policy: ..., rl: ...})", "rl.n_envs=4")
    p.add_argument("--env", required=True, help="env id")
    p.add_argument("--steps", type=positive_int, required=True, help="total env steps")
    p.add_argument("--init", default=None, help="BC checkpoint to start from (its policy config is used)")
    p.add_argument("--out", required=True, help="output directory (checkpoint/, tb/, summary.json)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--tasks", nargs="+", default=None, help="Crafter-Instruct tasks to train on")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_rl)

    p = sub.add_parser("ablate", help="train and compare fusion types on the same data, budget and seeds")
    p.add_argument(
        "--fusion", required=True, help="comma-separated fusion types, e.g. cross_attention,gmu,film"
    )
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument(
        "--out", required=True, help="output directory (ablation.md, ablation.json, ablation.png, runs)"
    )
    add_config_arguments(p, "run config shared by every fusion type", "train.steps=500")
    p.add_argument(
        "--seeds", type=non_negative_int, nargs="+", default=[0], help="training seeds per fusion type"
    )
    p.add_argument("--episodes", type=positive_int, default=20, help="eval episodes per instruction mode")
    p.add_argument("--env", default=None, help="eval env id (default: the dataset's)")
    p.add_argument(
        "--tasks", nargs="+", default=None, help="Crafter-Instruct tasks to evaluate (and train RL) on"
    )
    p.add_argument(
        "--rl-steps", type=non_negative_int, default=0, help="PPO env steps after BC (0 = BC only)"
    )
    p.add_argument("--workers", type=positive_int, default=1, help="eval worker processes")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("eval", help="evaluate a checkpoint in an env")
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint directory (config.json + model.safetensors)"
    )
    p.add_argument("--env", required=True, help="env id")
    p.add_argument("--episodes", type=positive_int, default=50, help="episodes per instruction mode")
    p.add_argument("--tasks", nargs="+", default=None, help="Crafter-Instruct tasks to cycle through")
    p.add_argument("--instruction-mode", choices=["correct", "swapped", "blank"], default="correct")
    p.add_argument(
        "--sensitivity", action="store_true", help="run correct, swapped and blank and report the gaps"
    )
    p.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale s")
    p.add_argument(
        "--phrasings",
        default=None,
        help="JSON {task: [instruction, ...]}: judge each instruction against its task on the same "
        "--episodes seeds per task as the trained phrasings, and report new / trained success",
    )
    p.add_argument("--seed", type=non_negative_int, default=100_000, help="episode i uses seed + i")
    p.add_argument("--workers", type=positive_int, default=2, help="episode worker processes")
    p.add_argument("--video-dir", default=None, help="write mp4 videos of the first episodes here")
    p.add_argument("--videos", type=non_negative_int, default=1, help="how many episodes to record")
    p.add_argument(
        "--greedy",
        action="store_true",
        help="take the most likely action (default: sample, seeded per episode)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("rollout", help="roll a checkpoint out: captioned MP4/GIF per episode and JSON stats")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--env", required=True, help="env id")
    p.add_argument("--instruction", default=None, help="override the env's instruction")
    p.add_argument(
        "--task",
        default=None,
        help="the task that judges success (default: the task of a known --instruction phrasing, "
        "else the env's draw per seed)",
    )
    p.add_argument("--episodes", type=positive_int, default=1, help="episodes (seed, seed + 1, ...)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=non_negative_int, default=0, help="first episode seed")
    p.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale")
    p.add_argument("--sample", action="store_true", help="sample actions instead of taking the most likely")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser(
        "attention", help="record attention over frames: timeline PNG, overlays PNG, HTML viewer"
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--env", default=None, help="env id (for a rollout)")
    p.add_argument("--instruction", default=None, help="instruction (default: the env's)")
    p.add_argument(
        "--task",
        default=None,
        help="the task that judges success (as for rollout; default from --instruction)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=non_negative_int, default=0, help="episode seed")
    p.add_argument(
        "--max-steps", type=positive_int, default=None, help="stop the rollout after this many steps"
    )
    p.add_argument(
        "--from-dataset", default=None, help="replay a recorded demonstration instead of rolling out"
    )
    p.add_argument("--episode", type=non_negative_int, default=0, help="episode index in --from-dataset")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser(
        "demo",
        help="the main job: demonstrations, behavioral cloning, evaluation and a video on Crafter-Instruct",
    )
    p.add_argument("--out", default="outputs/demo", help="output directory")
    p.add_argument("--episodes", type=positive_int, default=600, help="expert episodes to collect")
    p.add_argument("--bc-steps", type=positive_int, default=700, help="behavioral-cloning steps")
    p.add_argument(
        "--eval-episodes", type=positive_int, default=40, help="evaluation episodes per instruction mode"
    )
    p.add_argument("--tasks", nargs="+", default=None, help="Crafter-Instruct tasks (default: four)")
    p.add_argument("--workers", type=positive_int, default=2, help="worker processes")
    p.add_argument("--seed", type=non_negative_int, default=0, help="base seed")
    p.set_defaults(func=cmd_demo)
    return parser


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() here, or stdout is no file
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        if not _stdout_reader_gone():  # a worker's pipe, say: a real failure
            raise
        # e.g. `instructcraft envs | head -1`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    except (ValueError, RuntimeError, LookupError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)  # an interrupted run: 128 + the signal
    except Exception as error:
        if type(error).__module__.startswith("gymnasium"):  # unknown env ids and the like
            print(f"error: {error}", file=sys.stderr)
            return 2
        raise

