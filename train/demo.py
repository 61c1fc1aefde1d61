"""The main job behind `make demo`."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import envs
from envs.collect import collect
from envs.dataset import Dataset
from envs.experts import default_expert_for
from envs.tasks import TASKS


def run_demo(out: str, episodes: int = 200, workers: int = 2, seed: int = 0) -> int:
    """Collect expert demonstrations on every Crafter-Instruct task and print their statistics."""
    from tqdm import tqdm

    root = Path(out)
    data = root / "crafter_demos"
    if data.exists():
        shutil.rmtree(data)
    root.mkdir(parents=True, exist_ok=True)
    tasks = list(TASKS)
    print(f"[1/2] collecting {episodes} expert episodes over {len(tasks)} Crafter-Instruct tasks")
    bar = tqdm(total=episodes, unit="ep", dynamic_ncols=True)
    start = time.perf_counter()
    stats = collect(
        str(data),
        envs.CRAFTER_ID,
        default_expert_for(envs.CRAFTER_ID),
        episodes,
        tasks=tasks,
        workers=workers,
        seed=seed,
        progress=lambda episode, running: (
            bar.update(1),
            bar.set_postfix(success=f"{running['success_rate']:.2f}"),
        ),
    )
    bar.close()
    summary = Dataset(data).summary()
    print(f"[2/2] dataset statistics ({time.perf_counter() - start:.1f} s)")
    print(f"{'task':22s} {'episodes':>8s} {'expert success':>15s} {'mean length':>12s} {'limit':>6s}")
    for task in tasks:
        row = summary["tasks"].get(task)
        if row:
            print(
                f"{task:22s} {row['episodes']:8d} {row['success_rate']:15.3f} "
                f"{row['mean_length']:12.1f} {TASKS[task].step_limit:6d}"
            )
    print(
        f"total: {summary['episodes']} episodes, {summary['steps']} steps, {summary['bytes'] / 1e6:.1f} MB, "
        f"{summary['instructions']} distinct instructions, {stats['episodes_per_s']:.1f} episodes/s"
    )
    print(f"outputs:\n  dataset  {data}\n  inspect  instructcraft data info {data}")
    return 0
