"""The main job behind `make demo`: demonstrations -> behavioral cloning -> DAgger -> evaluation -> video.

What it collects, trains and evaluates is a recipe, configs/demo.yaml, read into ``DemoRecipe``;
``run_demo``'s keywords (the flags of ``instructcraft demo``) override its settings.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
from policies.config import build_dataclass
from train.bc import train_bc
from train.config import (
    ConfigError,
    DaggerConfig,
    RunConfig,
    at_least,
    check_numbers,
    in_unit_interval,
    load_run_config,
    read_config_file,
    set_dotted,
)
from train.dagger import run_dagger
from train.errors import SettingError
from train.report import write_json

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "demo.yaml"

# run_demo's keywords (the flags of `instructcraft demo`) and the recipe settings they override.
OVERRIDES = {
    "tasks": "tasks",
    "episodes": "episodes",
    "config": "run_config",
    "bc_steps": "bc_steps",
    "dagger_rounds": "dagger.rounds",
    "dagger_episodes": "dagger.episodes",
    "dagger_steps": "dagger.steps",
    "eval_episodes": "eval_episodes",
    "seed": "seed",
    "workers": "workers",
}


@dataclass(frozen=True)
class DemoRecipe:
    """The demo's settings; a recipe file names every one (configs/demo.yaml says what each is)."""

    tasks: tuple[str, ...]
    episodes: int
    noise: float
    run_config: str
    """the BC run config: a path relative to the recipe file, or as given to ``config=``"""
    bc_steps: int
    dagger: DaggerConfig | None
    """None: no DAgger, the BC policy is evaluated (its ``workers`` are the recipe's)"""
    eval_episodes: int
    eval_seed: int
    seed: int
    workers: int

    def __post_init__(self) -> None:
        check_numbers(self, "demo")
        if not self.tasks:
            raise ConfigError("demo.tasks must name at least one task")
        at_least(self, "demo", 1, "episodes", "bc_steps", "eval_episodes", "workers")
        at_least(self, "demo", 0, "eval_seed", "seed")
        in_unit_interval(self, "demo", "noise")
        self._check_seeds()

    @property
    def training_episodes(self) -> int:
        """Episodes seeded ``seed, seed + 1, ...``: the demonstrations, then DAgger's rollouts."""
        return self.episodes + (self.dagger.rounds * self.dagger.episodes if self.dagger else 0)

    def _check_seeds(self) -> None:
        """Refuse a seed whose training episodes would reuse the evaluation's seeds: the
        evaluation must run on worlds training never saw."""
        training = (self.seed, self.seed + self.training_episodes - 1)
        evaluation = (self.eval_seed, self.eval_seed + self.eval_episodes - 1)
        if training[0] <= evaluation[1] and evaluation[0] <= training[1]:
            raise SettingError(
                f"demo --seed {self.seed}: training episodes use seeds {training[0]}..{training[1]}, which "
                f"overlap the evaluation seeds {evaluation[0]}..{evaluation[1]}; pick a --seed at most "
                f"{self.eval_seed - self.training_episodes} or above {evaluation[1]}"
            )


def load_recipe(path: str | Path = RECIPE, **overrides: Any) -> DemoRecipe:
    """The recipe at ``path`` with ``overrides`` (OVERRIDES' keywords; None keeps the recipe's
    value) applied; ``dagger_rounds=0`` runs no DAgger."""
    path = Path(path)
    data = read_config_file(path, "recipe settings")
    if isinstance(data.get("run_config"), str):
        data["run_config"] = str(path.parent / data["run_config"])
    for keyword, value in overrides.items():
        if keyword not in OVERRIDES:
            raise SettingError(f"the demo has no setting {keyword!r}; known: {sorted(OVERRIDES)}")
        if value is not None:
            set_dotted(data, OVERRIDES[keyword], str(value) if keyword == "config" else value, keyword)
    if isinstance(data.get("dagger"), dict) and data["dagger"].get("rounds") == 0:
        data["dagger"] = None
    names = [field.name for field in dataclasses.fields(DemoRecipe)]
    missing = [name for name in names if name not in data]
    if missing and set(data) <= set(names):  # an unknown key is said first: it may be a misspelling
        raise ConfigError(f"{path} misses {missing}: a recipe names every setting (see {RECIPE.name})")
    try:
        return build_dataclass(DemoRecipe, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


class _Stages:
    """Prints ``[i/n] what`` as each stage starts; ``timed`` stages add their seconds to ``timings``."""

    def __init__(self, total: int) -> None:
        self.total, self.started = total, 0
        self.timings: dict[str, float] = {}

    def announce(self, what: str) -> None:
        self.started += 1
        print(f"[{self.started}/{self.total}] {what}")

    @contextmanager
    def timed(self, name: str, what: str) -> Iterator[None]:
        start = time.perf_counter()
        self.announce(what)
        yield
        self.timings[name] = time.perf_counter() - start


def run_demo(out: str, recipe: str | Path = RECIPE, **overrides: Any) -> int:
    """Collect expert demonstrations, train BC on CPU for a few minutes, run DAgger rounds (the
    expert labels the states the cloned policy visits; fine-tune on the aggregate), evaluate
    with correct vs swapped instructions, record a rollout video, and print where everything is.

    ``recipe``: the recipe file; ``overrides`` replace its settings (``load_recipe``), e.g.
    ``config`` the BC run config (tests pass a tiny one), ``dagger_rounds=0`` no DAgger.
    """
    demo = load_recipe(recipe, **overrides)
    tasks = list(demo.tasks)
    root = Path(out)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    data = root / "demos"
    stages = _Stages(5 if demo.dagger else 4)
    with stages.timed("collect", f"collecting {demo.episodes} expert episodes {_describe_collection(demo)}"):
        stats = _collect(data, demo)
    summary = Dataset(data).summary()
    with stages.timed("bc", f"behavioral cloning for {demo.bc_steps} steps on CPU"):
        run = _bc_run_config(demo)
        trained = train_bc(run, str(data), str(root / "bc"))
    checkpoint, dagger = trained["checkpoint"], None
    if demo.dagger:
        rounds = dataclasses.replace(demo.dagger, workers=demo.workers)
        with stages.timed("dagger", f"DAgger: {_describe_rounds(rounds)}"):
            expert = default_expert_for(envs.CRAFTER_ID)
            run = dataclasses.replace(run, dagger=rounds)
            dagger = run_dagger(
                run, str(data), str(root / "dagger"), envs.CRAFTER_ID, expert, tasks=tasks, init=checkpoint
            )
        checkpoint = dagger["checkpoint"]
    with stages.timed("eval", f"evaluating on {demo.eval_episodes} new seeds per instruction mode"):
        results = {mode: _evaluate(checkpoint, demo, mode) for mode in ("correct", "swapped")}
    stages.announce("recording a captioned rollout video")
    video = _record_video(checkpoint, tasks[0], root / "videos", demo.eval_seed)
    _print_table(tasks, summary, results, stages.timings, stats)
    report = {
        "dataset": summary,
        "bc": trained,
        "dagger": dagger,
        "checkpoint": checkpoint,
        "eval": results,
        "timings_s": stages.timings,
        "video": video,
    }
    write_json(root / "summary.json", report)
    _print_outputs(root, data, checkpoint, video)
    return 0


def _bc_run_config(demo: DemoRecipe) -> RunConfig:
    """The recipe's BC run config, trained for ``bc_steps`` with the recipe's seed, one checkpoint at the end."""
    steps = demo.bc_steps
    return load_run_config(
        demo.run_config,
        [f"train.steps={steps}", f"train.seed={demo.seed}", f"train.checkpoint_every={steps}"],
    )


def _evaluate(checkpoint: str, demo: DemoRecipe, mode: str) -> dict[str, Any]:
    """``checkpoint`` on the recipe's evaluation seeds, told each task's instruction (``mode``
    "correct") or another task's ("swapped")."""
    return evaluate(
        envs.CRAFTER_ID,
        demo.eval_episodes,
        checkpoint=checkpoint,
        tasks=list(demo.tasks),
        mode=mode,
        workers=demo.workers,
        seed=demo.eval_seed,
    )


def _describe_collection(demo: DemoRecipe) -> str:
    return f"(DART noise {demo.noise}) on {envs.CRAFTER_ID} ({', '.join(demo.tasks)})"


def _describe_rounds(dagger: DaggerConfig) -> str:
    return (
        f"{dagger.rounds} round(s) of {dagger.episodes} rollouts labelled by the expert "
        f"(beta {dagger.beta}), {dagger.steps} fine-tuning steps each"
    )


def _record_video(checkpoint: str, task: str, video_dir: Path, seed: int) -> list[str]:
    """The first evaluation episode of ``task`` (``seed``, sampled actions as evaluated) as a
    captioned MP4 and GIF, by the path ``instructcraft rollout`` takes: each frame shows the
    instruction, the step, the action with its probability, and the return."""
    agent = Agent.from_pretrained(checkpoint, seed=seed)
    stats = rollout(agent, envs.CRAFTER_ID, str(video_dir), seed=seed, task=task, deterministic=False)
    return [row["mp4"] for row in stats["episodes"]]


def _collect(data: Path, demo: DemoRecipe) -> dict[str, Any]:
    """The expert's demonstrations (successful ones only, with DART noise), with a progress bar."""
    bar = tqdm(total=demo.episodes, unit="ep", dynamic_ncols=True)
    stats = collect(
        str(data),
        envs.CRAFTER_ID,
        default_expert_for(envs.CRAFTER_ID),
        demo.episodes,
        tasks=list(demo.tasks),
        workers=demo.workers,
        seed=demo.seed,
        only_success=True,
        noise=demo.noise,  # DART: demonstrations that show recoveries from mistakes
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
