"""The rest: ``envs`` (what can be run) and ``bench`` (how fast it runs)."""

from __future__ import annotations

import argparse

from train.cli import common


def add_envs_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("envs", help="list env ids and their tasks")
    common.add_json_flag(p, "print JSON")
    p.set_defaults(func=run_envs)


def babyai_step_limit(env_id: str) -> int:
    """The level's own step limit (minigrid sets it on reset; it does not depend on the seed)."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.reset(seed=0)
    limit = int(env.unwrapped.unwrapped_level.max_steps)
    env.close()
    return limit


def run_envs(args: argparse.Namespace) -> int:
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
        common.print_json(rows)
        return 0
    for row in rows:
        print(row["env_id"])
        for name, task in row["tasks"].items():
            limit = f"  (limit {task['step_limit']})" if "step_limit" in task else ""
            print(f"    {name:20s} {' | '.join(task['phrasings'])}{limit}")
    return 0


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="run a benchmark; prints side-by-side ratios")
    # train.bench.BENCHES in its order, named here so that building the parser imports no benchmark
    p.add_argument(
        "what", choices=["env", "policy", "bc", "attention", "rl", "data"], help="what to benchmark"
    )
    common.add_json_flag(p, "print JSON")
    p.add_argument("--quick", action="store_true", help="smaller budgets (smoke runs)")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from train.bench import BENCHES

    results = BENCHES[args.what](args.quick)
    if args.json:
        common.print_json(results)
    else:
        for key, value in results.items():
            print(f"{key:36s} {value:.4g}" if isinstance(value, float) else f"{key:36s} {value}")
    return 0
