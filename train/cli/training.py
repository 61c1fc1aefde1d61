"""Training: ``bc``, ``dagger``, ``rl``, ``ablate`` and ``demo`` (the whole pipeline in one go)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from train.cli import common
from train.report import print_json

if TYPE_CHECKING:
    from train.checkpoint import FinishedRun


class FromRunConfig:
    """The default of a flag that sets a run-config field: not given, the field keeps the value
    the run config gives it (its file, ``--set``, a resumed run's record), else the dataclass's
    default, which ``--help`` shows as ``%(default)s`` (read only then: building the parser
    imports no torch)."""

    def __init__(self, section: str, name: str) -> None:
        self.section, self.name = section, name

    def __str__(self) -> str:
        from train.config import RunConfig

        return str(getattr(getattr(RunConfig(), self.section), self.name))


class FromRecipe:
    """The default of an ``instructcraft demo`` flag: not given, the recipe's setting, which
    ``--help`` shows (the default recipe's, read only then)."""

    def __init__(self, keyword: str) -> None:
        self.keyword = keyword

    def __str__(self) -> str:
        from train.demo import OVERRIDES, load_recipe

        value: Any = load_recipe()
        for part in OVERRIDES[self.keyword].split("."):
            value = getattr(value, part) if value is not None else 0  # no dagger section: 0 rounds
        return " ".join(value) if isinstance(value, tuple) else str(value)


# ``instructcraft dagger``'s flag for each DaggerConfig field it exposes, with its argparse type
# and help; the defaults are DaggerConfig's. The flags are train.dagger_settings.FLAGS (which the
# resume command is written with; a test keeps the two equal), named here so that building the
# parser imports no torch.
DAGGER_FLAGS = {
    "rounds": ("--rounds", common.positive_int, "rounds after round 0"),
    "episodes": ("--episodes", common.positive_int, "labelled rollouts per round"),
    "beta": ("--beta", float, "P(execute the expert's action) in round 1"),
    "beta_decay": ("--beta-decay", float, "beta is multiplied by this every round"),
    "steps": ("--steps-per-round", common.positive_int, "BC fine-tuning steps per round"),
    "eval_episodes": ("--eval-episodes", common.non_negative_int, "learner-only evaluation per round"),
    "workers": ("--workers", common.positive_int, "rollout and evaluation processes"),
}


def add_bc_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bc", help="behavioral cloning on a dataset (works under torchrun)")
    common.add_config_arguments(p, "YAML or JSON run config ({policy: ..., train: ...})", "train.lr=3e-4")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--out", required=True, help="output directory (checkpoint/, tb/, config.resolved.yaml)")
    p.add_argument(
        "--resume",
        default=None,
        help="checkpoint (or run) directory to continue, with the settings it recorded; --config and "
        "--set override them (a note lists what changed)",
    )
    p.add_argument(
        "--init", default=None, help="start from a checkpoint's weights (fresh optimizer): fine-tuning"
    )
    p.add_argument(
        "--skip-bad-episodes",
        action="store_true",
        help="train on the readable episodes when some are missing or corrupt (train.skip_bad_episodes)",
    )
    common.add_json_flag(p)
    p.set_defaults(func=run_bc)


def run_bc(args: argparse.Namespace) -> int:
    from train.bc import INIT_POLICY_FIELDS, finished_bc_run, train_bc
    from train.checkpoint import recorded_run_config, refuse_unapplied_policy_settings
    from train.config import load_run_config, refuse_unused_settings
    from train.periodic_eval import periodic_evaluator

    refuse_unused_settings(args.set, ("policy", "train"), "bc")
    args.init = common.resolve_init(args.init)  # pretrained:<name> is a folder too
    skip = ["train.skip_bad_episodes=true"] if args.skip_bad_episodes else []
    # A resumed run continues with the settings it recorded, unless --config or --set say otherwise.
    base = recorded_run_config(args.resume) if args.resume and not args.init else None
    run = load_run_config(args.config, [*args.set, *skip], base=base)
    if args.init:
        refuse_unapplied_policy_settings(args.init, run.policy, args.set, "--init", INIT_POLICY_FIELDS)
    finished = finished_bc_run(args.resume, run) if args.resume and not args.init else None
    if finished is not None:
        return _say_finished(
            finished,
            f"trained {finished.done} steps of train.steps={run.train.steps}",
            f"resume with --set train.steps=N, N > {finished.done}",
            args.json,
        )
    summary = train_bc(
        run,
        args.data,
        args.out,
        resume=args.resume,
        evaluate_fn=periodic_evaluator(run, args.data),
        init=args.init,
        refuse_existing=True,
    )
    if summary is None:
        return 0
    if args.json:
        print_json(summary)
    else:
        print(
            f"trained {summary['steps']} steps, final loss {summary['final_loss']:.4f}; checkpoint {summary['checkpoint']}"
        )
        validation = summary.get("validation")
        if validation:
            line = (
                f"  validation ({validation['episodes']} held-out episodes): loss {validation['loss']:.3f}, "
                f"accuracy {validation['accuracy']:.3f}"
            )
            if validation["accuracy_swapped"] is not None:
                line += (
                    f"; with swapped instructions loss {validation['loss_swapped']:.3f}, "
                    f"accuracy {validation['accuracy_swapped']:.3f}"
                )
            print(line)
        for row in summary["evaluations"]:
            print(f"  eval at step {row['step']}: success {row['success_rate']:.3f}")
    return 0


def _say_finished(finished: FinishedRun, done: str, further: str, as_json: bool) -> int:
    """A resume of a finished run: say so (the summary it wrote on stdout with ``--json``) and
    change nothing."""
    message = (
        f"{finished.folder} is finished ({done}): nothing to train, its files are unchanged; "
        f"to train further, {further}"
    )
    if as_json:
        print(message, file=sys.stderr)
        print_json(finished.stored_summary() or {"out": str(finished.folder), "steps": finished.done})
    else:
        print(message)
    return 0


def add_dagger_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dagger",
        help="DAgger: roll the policy out, the expert labels every visited state, aggregate, retrain",
    )
    common.add_config_arguments(
        p,
        "YAML or JSON run config ({policy: ..., train: ..., dagger: ...}): round 0 trains with train.*, "
        "the rounds follow dagger.*",
        "dagger.eval_seed=0",
    )
    p.add_argument("--data", required=True, help="demonstrations to start from (copied into OUT/data)")
    p.add_argument("--env", required=True, help="env id the rollouts run in")
    p.add_argument(
        "--out", required=True, help="output directory (data/, round_NN/, checkpoint/, tb/, dagger.json)"
    )
    # Without the flag, a resumed run keeps what it was started with (None: not given).
    p.add_argument(
        "--expert",
        default=None,
        help="expert that labels (default: the env's default expert; on --resume: the run's own)",
    )
    common.add_tasks_flag(p, "Crafter-Instruct tasks to cycle through (on --resume: the run's own)")
    p.add_argument(
        "--init",
        default=None,
        help="round-0 policy: a checkpoint instead of BC on --data (on --resume: the run's own)",
    )
    p.add_argument(
        "--plan",
        default=None,
        help="roll out whole open-ended games in which the policy follows this plan (a YAML/JSON file "
        "or 'collect wood; place a table; ...', docs/plans.md) and the expert labels each "
        "instruction's task; needs --env instructcraft/Crafter-OpenEnded-v0 (on --resume: the run's own)",
    )
    for name, (flag, kind, text) in DAGGER_FLAGS.items():
        p.add_argument(
            flag,
            type=kind,
            action=common.RecordGiven,
            default=FromRunConfig("dagger", name),
            help=f"{text} (default: %(default)s), or the run config's dagger.{name}; on --resume, the run's own",
        )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out with the settings it was started with; --config and --set "
        "override its run config (a note lists what changed)",
    )
    common.add_ray_flags(p)
    common.add_json_flag(p)
    p.set_defaults(func=run_dagger)


def run_dagger(args: argparse.Namespace) -> int:
    from envs.experts import default_expert_for
    from train import dagger
    from train.bc import INIT_POLICY_FIELDS
    from train.checkpoint import refuse_unapplied_policy_settings
    from train.config import load_run_config, refuse_unused_settings
    from train.dagger_settings import load_state

    refuse_unused_settings(args.set, ("policy", "train", "dagger"), "dagger")
    args.init = common.resolve_init(args.init)  # pretrained:<name> is a folder too
    # A resumed run continues with what it was started with: its run config and DAgger settings
    # (--config, --set and the flags given again override them).
    started = load_state(Path(args.out)) if args.resume else {}
    base = {**started.get("run", {}), "dagger": started["dagger"]} if started else None
    run = load_run_config(args.config, args.set, base=base)
    given = {
        name: getattr(args, flag.removeprefix("--").replace("-", "_"))
        for name, (flag, *_) in DAGGER_FLAGS.items()
    }
    given = {name: value for name, value in given.items() if not isinstance(value, FromRunConfig)}
    run = dataclasses.replace(run, dagger=dataclasses.replace(run.dagger, **given))
    tasks, expert, init = (
        getattr(args, name) if getattr(args, name) is not None else started.get(name)
        for name in ("tasks", "expert", "init")
    )
    if init:  # every round fine-tunes the --init architecture
        refuse_unapplied_policy_settings(init, run.policy, args.set, "--init", INIT_POLICY_FIELDS)
    plan = _dagger_plan(args.plan, started, Path(args.out))
    with common.rollout_backend(args):
        state = dagger.run_dagger(
            run,
            args.data,
            args.out,
            args.env,
            expert or default_expert_for(args.env),
            tasks=tasks,
            init=init,
            resume=args.resume,
            plan=plan,
        )
    if args.json:
        print_json(state)
    else:
        for entry in state["rounds"]:
            print(
                f"round {entry['round']}: {dagger.evaluated(entry)}, dataset {entry['dataset_episodes']} episodes"
            )
        print(f"checkpoint {state['checkpoint']}")
    return 0


def _dagger_plan(value: str | None, started: dict[str, Any], out: Path) -> Any:
    """``--plan`` read and checked before anything runs; a resumed run without it follows the
    plan it was started with (kept in its state)."""
    from agent.plan import Plan
    from train.dagger_settings import STATE

    if value is not None:
        return Plan.from_arg(value)
    if started.get("plan"):
        return Plan.from_dict(started["plan"], source=str(out / STATE))
    return None


def add_rl_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rl", help="PPO (stable-baselines3) on the fusion policy, from scratch or from BC"
    )
    common.add_config_arguments(p, "YAML or JSON run config ({policy: ..., rl: ...})", "rl.n_envs=4")
    p.add_argument("--env", required=True, help="env id")
    p.add_argument(
        "--steps",
        type=common.positive_int,
        required=True,
        help="total env steps, rounded up to whole rollouts of rl.n_envs x rl.n_steps (a note says so)",
    )
    p.add_argument("--init", default=None, help="BC checkpoint to start from (its policy config is used)")
    p.add_argument("--out", required=True, help="output directory (checkpoint/, tb/, summary.json)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint, with the settings it recorded; --config and "
        "--set override them (a note lists what changed)",
    )
    common.add_tasks_flag(p, "Crafter-Instruct tasks to train on")
    p.add_argument(
        "--reward",
        choices=["task", "task_health", "crafter"],
        default=None,
        help="Crafter-Instruct's reward: task (1 on the instructed unlock, the env's default), "
        "task_health (plus crafter's +-0.1 per health point) or crafter (crafter's own); give it "
        "again on --resume, as --tasks",
    )
    common.add_json_flag(p)
    p.set_defaults(func=run_rl)


def run_rl(args: argparse.Namespace) -> int:
    from train.checkpoint import CHECKPOINT, recorded_run_config, refuse_unapplied_policy_settings
    from train.config import load_run_config, refuse_unused_settings
    from train.rl import train_rl
    from train.rl.run import finished_rl_run

    refuse_unused_settings(args.set, ("policy", "rl"), "rl")
    args.init = common.resolve_init(args.init)  # pretrained:<name> is a folder too
    checkpoint = Path(args.out) / CHECKPOINT
    # A resumed run continues with the settings it recorded, unless --config or --set say otherwise.
    run = load_run_config(
        args.config, args.set, base=recorded_run_config(checkpoint) if args.resume else None
    )
    # PPO from a checkpoint (the run's own on --resume, else --init) builds that policy as saved.
    if args.resume:
        refuse_unapplied_policy_settings(checkpoint, run.policy, args.set, "--resume")
        finished = finished_rl_run(args.out, args.steps)
        if finished is not None:
            return _say_finished(
                finished,
                f"{finished.done} env steps, --steps {args.steps}",
                f"resume with --steps N, N > {finished.done}",
                args.json,
            )
    elif args.init:
        refuse_unapplied_policy_settings(args.init, run.policy, args.set, "--init")
    env_kwargs: dict[str, Any] = {"task": args.tasks} if args.tasks else {}
    if args.reward is not None:
        from envs import CRAFTER_ID
        from train.errors import SettingError

        if args.env != CRAFTER_ID:
            raise SettingError(f"--reward sets {CRAFTER_ID}'s reward; {args.env} has its own: leave it out")
        env_kwargs["reward_mode"] = args.reward
    summary = train_rl(
        run,
        args.env,
        args.steps,
        args.out,
        init=args.init,
        resume=args.resume,
        env_kwargs=env_kwargs,
        progress=not args.json,
        refuse_existing=True,
    )
    if args.json:
        print_json(summary)
    else:
        print(
            f"PPO {summary['timesteps']} env steps at {summary['steps_per_s']:.1f} steps/s; "
            f"checkpoint {summary['checkpoint']}"
        )
        for task, rate in summary["success_rate_per_task"].items():
            print(f"  {task:24s} success {rate:.3f} (last episodes)")
    return 0


def add_ablate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablate", help="train and compare fusion types on the same data, budget and seeds"
    )
    p.add_argument(
        "--fusion", required=True, help="comma-separated fusion types, e.g. cross_attention,gmu,film"
    )
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument(
        "--out", required=True, help="output directory (ablation.md, ablation.json, ablation.png, runs)"
    )
    common.add_config_arguments(p, "run config shared by every fusion type", "train.steps=500")
    p.add_argument(
        "--seeds", type=common.non_negative_int, nargs="+", default=[0], help="training seeds per fusion type"
    )
    p.add_argument(
        "--episodes", type=common.positive_int, default=20, help="eval episodes per instruction mode"
    )
    p.add_argument("--env", default=None, help="eval env id (default: the dataset's)")
    common.add_tasks_flag(p, "Crafter-Instruct tasks to evaluate (and train RL) on")
    p.add_argument(
        "--rl-steps", type=common.non_negative_int, default=0, help="PPO env steps after BC (0 = BC only)"
    )
    common.add_workers_flag(p, default=1, help="eval worker processes")
    common.add_json_flag(p)
    p.set_defaults(func=run_ablate)


def run_ablate(args: argparse.Namespace) -> int:
    from policies import FUSIONS
    from train.ablate import ablate
    from train.config import refuse_unused_settings
    from train.errors import SettingError

    # PPO after BC reads rl.*; BC alone does not.
    refuse_unused_settings(
        args.set, ("policy", "train", "rl") if args.rl_steps else ("policy", "train"), "ablate"
    )
    fusions = [name.strip() for name in args.fusion.split(",") if name.strip()]
    unknown = [name for name in fusions if name not in FUSIONS]
    if unknown:
        raise SettingError(f"unknown fusion type(s) {unknown}; known: {sorted(FUSIONS)}")
    summary = ablate(
        fusions,
        args.data,
        args.out,
        overrides=args.set,
        eval_env=args.env,
        **common.same_named(args, "config", "seeds", "episodes", "tasks", "rl_steps", "workers"),
        log=(lambda _: None) if args.json else print,
    )
    if args.json:
        print_json(summary)
    else:
        print((Path(args.out) / "ablation.md").read_text())
    return 0


# ``instructcraft demo``'s flags: each overrides the recipe setting train.demo.OVERRIDES names for
# it (the flag's name is run_demo's keyword); the defaults are the recipe's.
DEMO_FLAGS = {
    "episodes": (common.positive_int, "expert episodes to collect"),
    "bc_steps": (common.positive_int, "behavioral-cloning steps"),
    "eval_episodes": (common.positive_int, "evaluation episodes per instruction mode"),
    "dagger_rounds": (common.non_negative_int, "DAgger rounds after BC (0: evaluate the BC policy)"),
    "dagger_episodes": (common.positive_int, "labelled rollouts per DAgger round"),
    "dagger_steps": (common.positive_int, "fine-tuning steps per DAgger round"),
}


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: demonstrations, behavioral cloning, DAgger rounds, evaluation and a video on "
        "Crafter-Instruct",
    )
    p.add_argument("--out", default="outputs/demo", help="output directory")
    p.add_argument(
        "--recipe",
        default=None,
        help="the demo's recipe, a YAML file the flags below override (default: configs/demo.yaml)",
    )
    for name, (kind, text) in DEMO_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=FromRecipe(name), help=text)
    p.add_argument("--tasks", nargs="+", default=FromRecipe("tasks"), help="Crafter-Instruct tasks, in turn")
    common.add_workers_flag(p, default=FromRecipe("workers"))
    common.add_seed_flag(p, FromRecipe("seed"), "base seed")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from train import demo

    names = [*DEMO_FLAGS, "tasks", "workers", "seed"]
    given = {name: getattr(args, name) for name in names if not isinstance(getattr(args, name), FromRecipe)}
    return demo.run_demo(args.out, args.recipe or demo.RECIPE, **given)
