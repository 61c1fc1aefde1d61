"""The main job behind `make demo`: demonstrations -> behavioral cloning -> DAgger -> evaluation -> video."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

import envs
from agent import Agent
from agent.evaluate import evaluate
from agent.rollout import rollout
from envs.data.collect import collect
from envs.data.store import Dataset
from envs.experts import default_expert_for
from train.bc import train_bc
from train.config import load_run_config
from train.dagger import DaggerConfig, run_dagger
from train.errors import SettingError
from train.report import write_json

DEMO_TASKS = ["collect_wood", "collect_drink", "eat_cow", "place_table"]
EVAL_SEED = 100_000  # evaluation episode i uses seed EVAL_SEED + i: worlds training never saw
REPO = Path(__file__).resolve().parents[1]


def run_demo(
    out: str,
    episodes: int = 2400,
    workers: int = 2,
    seed: int = 0,
    bc_steps: int = 700,
    eval_episodes: int = 80,
    tasks: list[str] | None = None,
    config: str | Path | None = None,
    dagger_rounds: int = 3,
    dagger_episodes: int = 400,
    dagger_steps: int = 700,
) -> int:
    """Collect expert demonstrations, train BC on CPU for a few minutes, run DAgger rounds (the
    expert labels the states the cloned policy visits; fine-tune on the aggregate), evaluate
    with correct vs swapped instructions, record a rollout video, and print where everything is.

    ``config``: the BC run config (default ``configs/bc_crafter.yaml``; tests pass a tiny one).
    ``dagger_rounds`` 0 skips DAgger and evaluates the BC policy.
    """
    tasks = tasks or DEMO_TASKS
    _check_seeds(seed, episodes + dagger_rounds * dagger_episodes, eval_episodes)
    root = Path(out)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    data, run_dir, video_dir = root / "demos", root / "bc", root / "videos"
    dagger_dir = root / "dagger"
    stages = 5 if dagger_rounds else 4
    timings: dict[str, float] = {}

    start = time.perf_counter()
    print(
        f"[1/{stages}] collecting {episodes} expert episodes (DART noise 0.25) on {envs.CRAFTER_ID} ({', '.join(tasks)})"
    )
    stats = _collect(data, tasks, episodes, workers, seed)
    timings["collect"] = time.perf_counter() - start
    summary = Dataset(data).summary()

    start = time.perf_counter()
    print(f"[2/{stages}] behavioral cloning for {bc_steps} steps on CPU")
    run = load_run_config(
        config or REPO / "configs" / "bc_crafter.yaml",
        [f"train.steps={bc_steps}", f"train.seed={seed}", f"train.checkpoint_every={bc_steps}"],
    )
    trained = train_bc(run, str(data), str(run_dir))
    timings["bc"] = time.perf_counter() - start
    checkpoint = trained["checkpoint"]
    dagger = None
    if dagger_rounds:
        start = time.perf_counter()
        print(
            f"[3/{stages}] DAgger: {dagger_rounds} round(s) of {dagger_episodes} rollouts labelled by the expert "
            f"(beta 0.3), {dagger_steps} fine-tuning steps each"
        )
        rounds = DaggerConfig(
            rounds=dagger_rounds,
            episodes=dagger_episodes,
            beta=0.3,
            beta_decay=0.5,
            steps=dagger_steps,
            eval_episodes=0,
            workers=workers,
        )
        dagger = run_dagger(
            dataclasses.replace(run, dagger=rounds),
            str(data),
            str(dagger_dir),
            envs.CRAFTER_ID,
            default_expert_for(envs.CRAFTER_ID),
            tasks=tasks,
            init=checkpoint,
        )
        checkpoint = dagger["checkpoint"]
        timings["dagger"] = time.perf_counter() - start

    start = time.perf_counter()
    print(f"[{stages - 1}/{stages}] evaluating on {eval_episodes} new seeds per instruction mode")
    results = {}
    for mode in ("correct", "swapped"):
        results[mode] = evaluate(
            envs.CRAFTER_ID,
            eval_episodes,
            checkpoint=checkpoint,
            tasks=tasks,
            mode=mode,
            workers=workers,
            seed=EVAL_SEED,
        )
    timings["eval"] = time.perf_counter() - start

    print(f"[{stages}/{stages}] recording a captioned rollout video")
    video = _record_video(checkpoint, tasks[0], video_dir)

    _print_table(tasks, summary, results, timings, stats)
    report = {
        "dataset": summary,
        "bc": trained,
        "dagger": dagger,
        "checkpoint": checkpoint,
        "eval": results,
        "timings_s": timings,
        "video": video,
    }
    write_json(root / "summary.json", report)
    _print_outputs(root, data, checkpoint, video)
    return 0


def _check_seeds(seed: int, training_episodes: int, eval_episodes: int) -> None:
    """Refuse a --seed whose training episodes (demonstrations, then DAgger's) would reuse the
    evaluation's seeds: the evaluation must run on worlds training never saw."""
    training = (seed, seed + training_episodes - 1)
    evaluation = (EVAL_SEED, EVAL_SEED + eval_episodes - 1)
    if training[0] <= evaluation[1] and evaluation[0] <= training[1]:
        raise SettingError(
            f"demo --seed {seed}: training episodes use seeds {training[0]}..{training[1]}, which overlap the "
            f"evaluation seeds {evaluation[0]}..{evaluation[1]}; pick a --seed at most "
            f"{EVAL_SEED - (training[1] - training[0] + 1)} or above {evaluation[1]}"
        )


def _record_video(checkpoint: str, task: str, video_dir: Path) -> list[str]:
    """The first evaluation episode of ``task`` (seed ``EVAL_SEED``, sampled actions as evaluated)
    as a captioned MP4 and GIF, by the path ``instructcraft rollout`` takes: each frame shows the
    instruction, the step, the action with its probability, and the return."""
    agent = Agent.from_pretrained(checkpoint, seed=EVAL_SEED)
    stats = rollout(agent, envs.CRAFTER_ID, str(video_dir), seed=EVAL_SEED, task=task, deterministic=False)
    return [row["mp4"] for row in stats["episodes"]]


def _collect(data: Path, tasks: list[str], episodes: int, workers: int, seed: int) -> dict[str, Any]:
    """The expert's demonstrations (successful ones only, with DART noise), with a progress bar."""
    bar = tqdm(total=episodes, unit="ep", dynamic_ncols=True)
    stats = collect(
        str(data),
        envs.CRAFTER_ID,
        default_expert_for(envs.CRAFTER_ID),
        episodes,
        tasks=tasks,
        workers=workers,
        seed=seed,
        only_success=True,
        noise=0.25,  # DART: demonstrations that show recoveries from mistakes
        progress=lambda episode, running: (
            bar.update(1),
            bar.set_postfix(success=f"{running['success_rate']:.2f}"),
        ),
    )
    bar.close()
    return stats


def _print_table(
    tasks: list[str],
    summary: dict[str, Any],
    results: dict[str, Any],
    timings: dict[str, float],
    stats: dict[str, Any],
) -> None:
    """Per task: demonstrations, the expert's success, the policy's with the correct and with a
    swapped instruction; then the means and the time each stage took."""
    print()
    print(
        f"{'task':18s} {'demos':>6s} {'expert':>7s} {'correct':>11s} {'swapped':>11s} {'95% CI (correct)':>17s}"
    )
    for task in tasks:
        correct = results["correct"]["tasks"].get(task, {})
        swapped = results["swapped"]["tasks"].get(task, {})
        low, high = correct.get("ci95", (0.0, 1.0))
        print(
            f"{task:18s} {summary['tasks'][task]['episodes']:6d} {summary['tasks'][task]['success_rate']:7.2f} "
            f"{correct.get('success_rate', 0):11.2f} {swapped.get('success_rate', 0):11.2f} "
            f"{f'[{low:.2f}, {high:.2f}]':>17s}"
        )
    gap = results["correct"]["mean_task_success"] - results["swapped"]["mean_task_success"]
    print(
        f"mean success: correct {results['correct']['mean_task_success']:.2f}, swapped "
        f"{results['swapped']['mean_task_success']:.2f} (instruction sensitivity {gap:+.2f})"
    )
    print(
        "time: " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in timings.items()) + "; "
        f"data {summary['episodes']} episodes / {summary['steps']} steps; expert success {stats['success_rate']:.2f}"
    )


def _print_outputs(root: Path, data: Path, checkpoint: str, video: list[str]) -> None:
    print("\noutputs:")
    print(f"  dataset      {data}   (instructcraft data info {data})")
    print(f"  checkpoint   {checkpoint}")
    print(f"  tensorboard  {root}   (tensorboard --logdir {root}: BC, DAgger rounds)")
    print(f"  video        {video[0] if video else '-'}")
    print(f"  summary      {root / 'summary.json'}")
