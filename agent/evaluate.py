"""Evaluation loops: per-task success with 95% intervals, instruction sensitivity, videos.

Episodes run in worker processes (each loads the checkpoint once) or in-process for a policy
held in memory (periodic evaluation during training). The parent first loads the checkpoint and
makes the env itself, so a bad checkpoint, a mistyped env id or a checkpoint trained for another
action space fails in seconds, before any worker starts; a worker that dies ends the run. Ctrl-C
stops the workers at once and raises ``EvaluationInterrupted`` with what finished.

Length (about 500 lines): the episode loop's callers, the statistics (intervals, modes, the
Crafter score) and the worker protocol stay together, so every number in eval.json is computed
in the file that runs the episodes behind it.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs
from agent.agent import Agent
from agent.errors import AgentError, AgentSettingError
from agent.expert_actor import ExpertActor, check_expert_follows
from agent.plan import Plan
from agent.pretrained import resolve_checkpoint
from envs import ray_rollouts
from envs.crafter_score import crafter_score as score_of_rates
from envs.crafter_score import stats_record, success_rates
from envs.crafter_tasks import TASKS
from envs.episodes import play_episode
from envs.video import write_video
from envs.workers import in_worker_process, make_env, map_jobs, usable_workers

MODES = ("correct", "swapped", "blank")


class EvaluationInterrupted(AgentError, RuntimeError):
    """Ctrl-C stopped an evaluation after ``finished`` of ``planned`` episodes. ``results`` hold
    what finished, as the evaluation would have returned it but over the finished episodes only
    (for ``sensitivity``, one ``evaluate`` summary per mode begun); ``rows`` are the finished
    episodes of the run that was stopped. ``exit_code`` is the shell's for SIGINT, 130."""

    exit_code = 128 + int(signal.SIGINT)

    def __init__(
        self,
        finished: int,
        planned: int,
        results: list[dict[str, Any]],
        rows: list[dict[str, Any]] | None = None,
    ) -> None:
        over = f"; the rates above are over those {finished}" if results else ""
        super().__init__(f"interrupted after {finished} of {planned} episodes{over}")
        self.finished, self.planned, self.results, self.rows = finished, planned, results, rows or []


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))


def swapped_instruction(env_id: str, task: str, seed: int, pool: tuple[str, ...] | None = None) -> str:
    """An instruction for a different task than ``task`` (deterministic in ``seed``), drawn from
    ``pool`` (the evaluated tasks) when it has another task, else from every task."""
    rng = np.random.default_rng([seed, 7919])
    if env_id == envs.CRAFTER_ID:
        others = [name for name in (pool or ()) if name != task] or [name for name in TASKS if name != task]
        other = TASKS[others[int(rng.integers(len(others)))]]
        return other.phrasings[int(rng.integers(len(other.phrasings)))]
    # BabyAI: the mission of another level instance that asks for something else.
    scratch = gym.make(env_id)
    current = scratch.reset(seed=seed)[1]["instruction"]
    for offset in range(1, 100):
        mission = scratch.reset(seed=seed + 104_729 * offset)[1]["instruction"]
        if mission != current:
            return mission
    return current


@dataclass(frozen=True)
class EpisodeJob:
    seed: int
    task: str | None
    mode: str
    cfg_scale: float
    video: str | None
    pool: tuple[str, ...] | None = None
    deterministic: bool = False
    instruction: str | None = None  # given to the agent instead of the env's (mode "phrasing")
    plan: Plan | None = None  # instructions followed in turn instead of the env's one


def run_episode(agent: Agent | ExpertActor, env: gym.Env, env_id: str, job: EpisodeJob) -> dict[str, Any]:
    told: list[str] = []  # the instruction the agent is given
    frames: list[np.ndarray] = []

    def start(observation: dict[str, Any], info: dict[str, Any]) -> None:
        instruction = info["instruction"]
        if job.plan is not None:
            agent.reset(plan=job.plan, info=info)
            instruction = agent.instruction
        elif job.instruction is not None:
            instruction = job.instruction
        elif job.mode == "swapped":
            instruction = swapped_instruction(env_id, info["task"], job.seed, job.pool)
        elif job.mode == "blank":
            instruction = ""
        told.append(instruction)
        if job.plan is None:
            # A blank instruction means the learned null instruction (no text in the observation).
            agent.reset(instruction or None)
        agent.seed_episode(job.seed)  # sampled actions are reproducible per episode
        if job.video:
            frames.append(env.render())

    def on_step(step: Any) -> None:
        agent.observe(step.info)  # a plan moves on after the step that completed its instruction
        if job.video:
            frames.append(env.render())

    outcome = play_episode(
        env,
        agent.acting(job.deterministic, job.cfg_scale),
        seed=job.seed,
        task=job.task,
        on_reset=start,
        on_step=on_step,
    )
    if job.video:
        write_video(job.video, frames, scale=4)  # upscaled so small observations stay legible
    row = {
        "task": outcome.reset_info["task"],
        "seed": job.seed,
        "mode": job.mode,
        "instruction": told[0],
        "success": outcome.success,
        "length": outcome.length,
        "return": outcome.total_reward,
        "video": job.video,
    }
    if "achievements" in outcome.info:
        counts = {name: int(count) for name, count in outcome.info["achievements"].items()}
        row["achievements"] = sorted(name for name, count in counts.items() if count > 0)
        row["achievement_counts"] = counts
    if isinstance(agent, ExpertActor):
        row["stuck_steps"] = agent.stuck_steps  # steps the expert had no action for
    if agent.plan is not None:
        row["plan"] = {
            "completed": agent.plan.completed,
            "switches": len(agent.plan.events) - 1,
            "last_instruction": agent.plan.current,
        }
    return row


@dataclass(frozen=True)
class _Worker:
    agent: Agent | ExpertActor
    env: gym.Env
    env_id: str


def _load_worker(checkpoint: str, env_id: str, env_kwargs: dict[str, Any]) -> _Worker:
    import torch

    # One thread per worker process (they share the cores); never in this process, where a
    # capped pool runs the work in place and later training needs every thread.
    if in_worker_process():
        torch.set_num_threads(1)
    return _Worker(Agent.from_pretrained(checkpoint), gym.make(env_id, **env_kwargs), env_id)


def _load_expert_worker(expert: str, env_id: str, env_kwargs: dict[str, Any]) -> _Worker:
    env = gym.make(env_id, **env_kwargs)
    return _Worker(ExpertActor(expert, env), env, env_id)


def _episode_row(worker: _Worker, job: EpisodeJob) -> dict[str, Any]:
    return run_episode(worker.agent, worker.env, worker.env_id, job)


def crafter_score(unlocked: list[list[str]], achievements: list[str]) -> dict[str, Any]:
    """The Crafter score over ``achievements`` from each episode's unlocked names: success rates
    s_i in percent, S = exp(mean_i ln(1 + s_i)) - 1 (``envs.crafter_score`` has the formula)."""
    episodes = max(len(unlocked), 1)
    rates = {name: 100.0 * sum(name in row for row in unlocked) / episodes for name in achievements}
    return {"crafter_score": score_of_rates(rates), "achievement_rates_percent": rates}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    tasks: dict[str, dict[str, Any]] = {}
    for row in results:
        entry = tasks.setdefault(row["task"], {"episodes": 0, "successes": 0, "steps": 0})
        entry["episodes"] += 1
        entry["successes"] += int(row["success"])
        entry["steps"] += row["length"]
    for entry in tasks.values():
        entry["success_rate"] = entry["successes"] / entry["episodes"]
        entry["ci95"] = list(wilson_interval(entry["successes"], entry["episodes"]))
        entry["mean_length"] = entry["steps"] / entry["episodes"]
    successes = sum(int(r["success"]) for r in results)
    return {
        "episodes": len(results),
        "success_rate": successes / max(len(results), 1),
        "ci95": list(wilson_interval(successes, len(results))),
        "mean_task_success": float(np.mean([e["success_rate"] for e in tasks.values()])) if tasks else 0.0,
        "mean_length": float(np.mean([r["length"] for r in results])) if results else 0.0,
        "tasks": dict(sorted(tasks.items())),
        **_open_ended_score(results),
    }


def _open_ended_score(results: list[dict[str, Any]]) -> dict[str, Any]:
    """crafter's score over the open-ended episodes (envs.crafter_score has the definition)."""
    rows = [r for r in results if r["task"] == "open_ended" and "achievements" in r]
    if not rows:
        return {}
    rates = success_rates([dict.fromkeys(r["achievements"], 1) for r in rows])
    return {
        "crafter_score": score_of_rates(rates),
        "achievement_rates_percent": rates,
        "mean_return": float(np.mean([r["return"] for r in rows])),
    }


def stats_records(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Crafter episodes as the lines of crafter's ``stats.jsonl`` (length, reward, achievement
    counts), in episode order; ``reward`` is the episode's return (crafter's own reward on the
    open-ended env)."""
    return [
        stats_record(r["length"], r["return"], r["achievement_counts"])
        for r in results
        if "achievement_counts" in r
    ]


def per_episode(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each episode's result for ``--json`` (seed, task, instruction, success, length, return,
    achievement counts and plan progress where the env and the run have them)."""
    keys = (
        "seed",
        "task",
        "mode",
        "instruction",
        "success",
        "length",
        "return",
        "achievement_counts",
        "plan",
        "stuck_steps",
    )
    return [{key: row[key] for key in keys if key in row} for row in results]


def evaluate(
    env_id: str,
    episodes: int,
    *,
    checkpoint: str | None = None,
    agent: Agent | None = None,
    tasks: list[str] | None = None,
    mode: str = "correct",
    cfg_scale: float = 0.0,
    seed: int = 100_000,
    workers: int = 1,
    video_dir: str | None = None,
    videos: int = 1,
    deterministic: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    plan: Plan | None = None,
    expert: str | None = None,
) -> dict[str, Any]:
    """Run ``episodes`` episodes (seed + i, task cycling through ``tasks``) and summarise.

    Give a ``checkpoint`` directory (episodes run in ``workers`` processes), an in-memory
    ``agent`` (episodes run here) or an ``expert`` name (``envs.experts.EXPERTS``; it acts in
    the agent's place, in ``workers`` processes: ``agent.expert_actor``). The first ``videos``
    episodes are recorded to ``video_dir``. With a ``plan`` the agent follows its instructions
    in turn instead of the env's one.
    """
    if mode not in MODES:
        raise AgentSettingError(f"instruction mode must be one of {MODES}, got {mode!r}")
    if plan is not None and mode != "correct":
        raise AgentSettingError(
            f"a plan gives the agent its instructions: drop --instruction-mode {mode} (and --sensitivity)"
        )
    if sum(x is not None for x in (checkpoint, agent, expert)) != 1:
        raise ValueError("pass exactly one of checkpoint=, agent= or expert=")
    if expert is not None:
        _check_expert_run(expert, mode, plan, cfg_scale, deterministic)
    if episodes < 1:
        raise AgentSettingError(f"episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise AgentSettingError(f"workers must be >= 1, got {workers}")
    env_kwargs = dict(env_kwargs or {})
    # Checked here, once: unknown ids and task names, a checkpoint that cannot be loaded, and an
    # action space the checkpoint was not trained for all fail before any episode or worker.
    probe = make_env(env_id, tasks, **env_kwargs)
    if expert is not None:
        agent = local = ExpertActor(expert, probe)
    elif agent is None:
        agent = local = Agent.from_pretrained(checkpoint)
    else:
        local = None
    agent.check_env(probe)
    if mode == "swapped" and getattr(probe.unwrapped, "open_ended", False):
        raise AgentSettingError(
            f"{env_id} has one instruction for every episode, so a swapped instruction would be the same "
            "one: evaluate it with --instruction-mode correct (or blank), without --sensitivity"
        )
    probe.close()
    if plan is not None:
        agent.check_plan(plan)  # before any worker starts
    jobs = [
        EpisodeJob(
            seed + i,
            tasks[i % len(tasks)] if tasks else None,
            mode,
            cfg_scale,
            os.path.join(video_dir, f"{mode}_{i:03d}.mp4") if video_dir and i < videos else None,
            tuple(tasks) if tasks else None,
            deterministic,
            plan=plan,
        )
        for i in range(episodes)
    ]

    def summary_of(results: list[dict[str, Any]]) -> dict[str, Any]:
        summary = summarize(results)
        summary.update(
            {
                "env_id": env_id,
                "mode": mode,
                "cfg_scale": cfg_scale,
                "seed": seed,
                "deterministic": deterministic,
            }
        )
        summary["videos"] = [r["video"] for r in results if r["video"]]
        if plan is not None:
            summary["plan"] = {"source": plan.source, **plan.to_dict()}
        summary["per_episode"] = per_episode(results)
        return summary

    try:
        checkpoint = checkpoint if local is not None else None
        results = _run_jobs(jobs, env_id, agent, checkpoint, workers, env_kwargs, progress, expert)
    except EvaluationInterrupted as stopped:
        partial = [summary_of(stopped.rows)] if stopped.rows else []
        raise EvaluationInterrupted(stopped.finished, stopped.planned, partial, stopped.rows) from None
    return summary_of(results)


def _run_jobs(
    jobs: list[EpisodeJob],
    env_id: str,
    agent: Agent | ExpertActor,
    checkpoint: str | None,
    workers: int,
    env_kwargs: dict[str, Any],
    progress: Callable[[dict[str, Any]], None] | None,
    expert: str | None = None,
) -> list[dict[str, Any]]:
    """Episode rows in job order: here with ``agent``, or in ``workers`` processes (at most one per
    job and CPU core) that each load ``checkpoint`` (when given and more than one worker is left)
    or make ``expert``. Ctrl-C raises ``EvaluationInterrupted`` with the rows finished so far."""
    on_ray = ray_rollouts.active() is not None  # Ray tasks load the checkpoint, whatever ``workers`` is
    if checkpoint is not None and not on_ray:
        workers = usable_workers(workers, jobs, "eval")
    rows: Iterator[dict[str, Any]]
    if expert is not None:  # each process makes the expert (and its env): here when one worker is left
        setup, setup_args = _load_expert_worker, (expert, env_id, env_kwargs)
    elif checkpoint is None or (workers <= 1 and not on_ray):
        # The agent already loaded here acts: a worker's setup would also set this process's threads.
        here = _Worker(agent, gym.make(env_id, **env_kwargs), env_id)
        return _collect_rows((_episode_row(here, job) for job in jobs), len(jobs), progress)
    else:
        # Resolved once here (a shipped name or a hub id -> its local folder): workers load a path.
        setup, setup_args = _load_worker, (os.fspath(resolve_checkpoint(checkpoint)), env_id, env_kwargs)
    rows = map_jobs(_episode_row, jobs, setup=setup, setup_args=setup_args, workers=workers, what="eval")
    return _collect_rows(rows, len(jobs), progress)


def _collect_rows(
    rows: Iterator[dict[str, Any]], planned: int, progress: Callable[[dict[str, Any]], None] | None
) -> list[dict[str, Any]]:
    """The rows as they come, each reported to ``progress``; Ctrl-C stops the workers and raises
    ``EvaluationInterrupted`` with the rows finished so far."""
    results: list[dict[str, Any]] = []
    try:
        for row in rows:
            results.append(row)
            if progress:
                progress(row)
    except KeyboardInterrupt:
        rows.close()  # the workers stop now: their unfinished episodes would be thrown away
        raise EvaluationInterrupted(len(results), planned, [], results) from None
    return results


def _check_expert_run(
    expert: str, mode: str, plan: Plan | None, cfg_scale: float, deterministic: bool
) -> None:
    """What an expert cannot be asked, refused before any episode."""
    if mode == "blank":
        raise AgentSettingError(
            "an expert has no behaviour without an instruction: evaluate it with the correct or a "
            "swapped instruction, or a plan (--sensitivity runs correct and swapped)"
        )
    if cfg_scale or deterministic:
        raise AgentSettingError(
            "--cfg-scale and --greedy steer a policy's action distribution, and an expert has none: drop them"
        )
    if mode == "swapped":
        check_expert_follows(expert, "a swapped instruction asks the expert for another task than its env's")
    if plan is not None:
        check_expert_follows(expert, "a plan tells the expert one task after another")


def read_phrasings(path: str, env_id: str) -> dict[str, list[str]]:
    """A JSON file ``{"task": ["instruction", ...], ...}``, checked: known tasks of ``env_id``,
    non-empty printable instructions within the env's length limit."""
    import json

    from envs.spaces import check_instruction

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AgentSettingError(f"cannot read phrasings from {path}: {error}") from None
    if not isinstance(data, dict) or not data:
        raise AgentSettingError(f"{path} must hold a JSON object mapping task names to lists of instructions")
    phrasings: dict[str, list[str]] = {}
    for task, texts in data.items():
        if (
            not isinstance(texts, list)
            or not texts
            or not all(isinstance(t, str) and t.strip() for t in texts)
        ):
            raise AgentSettingError(f"{path}: {task!r} must map to a non-empty list of non-empty strings")
        phrasings[task] = [check_instruction(text) for text in texts]
    make_env(env_id, list(phrasings)).close()  # unknown tasks (or an env without tasks) fail here
    return phrasings


def evaluate_phrasings(
    env_id: str,
    phrasings: dict[str, list[str]],
    episodes: int,
    *,
    checkpoint: str,
    seed: int = 100_000,
    workers: int = 1,
    cfg_scale: float = 0.0,
    deterministic: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Each given instruction judged against its task on ``episodes`` seeds, and the env's own
    (trained) phrasings of that task on the same seeds; reports success on the new phrasings
    over success on the trained ones, per task and overall (mean over tasks)."""
    if episodes < 1:
        raise AgentSettingError(f"episodes must be >= 1, got {episodes}")
    env_kwargs = dict(env_kwargs or {})
    probe = make_env(env_id, list(phrasings), **env_kwargs)
    agent = Agent.from_pretrained(checkpoint)
    agent.check_env(probe)
    probe.close()
    jobs = []
    for task, texts in phrasings.items():
        for i in range(episodes):
            jobs.append(EpisodeJob(seed + i, task, "correct", cfg_scale, None, None, deterministic))
            jobs.extend(
                EpisodeJob(seed + i, task, "phrasing", cfg_scale, None, None, deterministic, text)
                for text in texts
            )
    try:
        rows = _run_jobs(jobs, env_id, agent, checkpoint, workers, env_kwargs, progress)
    except EvaluationInterrupted as stopped:
        partial = _phrasings_result(env_id, phrasings, stopped.rows, seed)
        raise EvaluationInterrupted(
            stopped.finished, stopped.planned, [partial] if partial["tasks"] else [], stopped.rows
        ) from None
    return _phrasings_result(env_id, phrasings, rows, seed)


def _phrasings_result(
    env_id: str, phrasings: dict[str, list[str]], rows: list[dict[str, Any]], seed: int
) -> dict[str, Any]:
    """``evaluate_phrasings``'s table from its episode rows; a task that has not yet run with its
    trained phrasings and every new one (an interrupted run) is left out."""
    table: dict[str, Any] = {}
    for task, texts in phrasings.items():
        trained = [r for r in rows if r["task"] == task and r["mode"] == "correct"]
        runs = {
            text: [
                r for r in rows if r["task"] == task and r["mode"] == "phrasing" and r["instruction"] == text
            ]
            for text in texts
        }
        if not trained or not all(runs.values()):
            continue
        entry: dict[str, Any] = {"trained": summarize(trained)["success_rate"], "phrasings": {}}
        for text, picked in runs.items():
            successes = sum(int(r["success"]) for r in picked)
            entry["phrasings"][text] = {
                "success_rate": successes / len(picked),
                "ci95": list(wilson_interval(successes, len(picked))),
            }
        entry["new"] = float(np.mean([p["success_rate"] for p in entry["phrasings"].values()]))
        entry["ratio"] = entry["new"] / entry["trained"] if entry["trained"] > 0 else None
        table[task] = entry
    trained_mean = float(np.mean([e["trained"] for e in table.values()])) if table else 0.0
    new_mean = float(np.mean([e["new"] for e in table.values()])) if table else 0.0
    per_task = [sum(r["task"] == task and r["mode"] == "correct" for r in rows) for task in table]
    return {
        "env_id": env_id,
        "episodes_per_task": min(per_task, default=0),  # the --episodes of a run that finished
        "seed": seed,
        "tasks": table,
        "trained_mean": trained_mean,
        "new_mean": new_mean,
        "ratio": new_mean / trained_mean if trained_mean > 0 else None,
        "episodes": [
            {key: row[key] for key in ("task", "seed", "mode", "instruction", "success", "length")}
            for row in rows
        ],
    }


def sensitivity_modes(expert: str | None = None) -> tuple[str, ...]:
    """The modes ``sensitivity`` runs: all three, or correct and swapped for an expert (which
    has no behaviour without an instruction)."""
    return MODES if expert is None else ("correct", "swapped")


def sensitivity(env_id: str, episodes: int, **kwargs: Any) -> dict[str, Any]:
    """Correct, swapped and blank instructions on the same seeds (an ``expert=``: correct and
    swapped); per-task and mean gaps."""
    modes = sensitivity_modes(kwargs.get("expert"))
    runs: dict[str, dict[str, Any]] = {}
    for mode in modes:
        try:
            runs[mode] = evaluate(env_id, episodes, mode=mode, **kwargs)
        except (EvaluationInterrupted, KeyboardInterrupt) as error:
            # A KeyboardInterrupt here came before this mode's first episode (its checks).
            stopped = error if isinstance(error, EvaluationInterrupted) else EvaluationInterrupted(0, 0, [])
            finished = sum(run["episodes"] for run in runs.values()) + stopped.finished
            results = [*runs.values(), *stopped.results]
            raise EvaluationInterrupted(finished, episodes * len(modes), results, stopped.rows) from None
    tasks = sorted(runs["correct"]["tasks"])
    table = {
        task: {mode: runs[mode]["tasks"].get(task, {}).get("success_rate", 0.0) for mode in modes}
        for task in tasks
    }
    for row in table.values():
        row["correct_minus_swapped"] = row["correct"] - row["swapped"]
    gap = float(np.mean([row["correct_minus_swapped"] for row in table.values()])) if table else 0.0
    return {"runs": runs, "tasks": table, "mean_correct_minus_swapped": gap}
