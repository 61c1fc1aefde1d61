"""Rollouts that write captioned videos (MP4 and GIF) and JSON statistics."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw, ImageFont

import envs  # noqa: F401  (registers the instructcraft ids)
from agent.agent import Agent
from agent.errors import AgentSettingError, AgentWriteError
from agent.plan import Plan
from envs.episodes import Step, play_episode
from envs.errors import TaskError
from envs.video import upscale, write_video

CAPTION_HEIGHT = 44


@functools.lru_cache(maxsize=8)
def caption_font(size: int = 11) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (matplotlib ships it; it covers Latin, Greek and Cyrillic, so an instruction
    such as "öffne die Tür" is drawn, not boxes), else a system DejaVu, else Pillow's own font."""
    candidates = []
    try:
        from matplotlib import font_manager

        candidates.append(font_manager.findfont("DejaVu Sans", fallback_to_default=False))
    except (ImportError, ValueError):
        pass
    candidates.append("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    for path in candidates:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def action_name(env: gym.Env, action: Any) -> str:
    names = getattr(env.unwrapped, "action_names", None)
    if names is not None and np.ndim(action) == 0:
        return str(names[int(action)])
    return str(np.asarray(action).tolist())


def caption(frame: np.ndarray, lines: list[str], scale: int = 4) -> np.ndarray:
    """The frame upscaled by ``scale`` (nearest) over a black caption bar with ``lines``."""
    big = upscale(frame, scale)
    image = Image.new("RGB", (big.shape[1], big.shape[0] + CAPTION_HEIGHT))
    image.paste(Image.fromarray(big), (0, 0))
    draw = ImageDraw.Draw(image)
    font = caption_font()
    for row, line in enumerate(lines[:3]):
        draw.text((4, big.shape[0] + 2 + 14 * row), line, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def write_videos(frames: list[np.ndarray], stem: Path, fps: int = 10) -> dict[str, str]:
    """``stem``.mp4 (H.264) and ``stem``.gif from the same frames."""
    mp4, gif = stem.with_suffix(".mp4"), stem.with_suffix(".gif")
    write_video(mp4, frames, fps)
    write_video(gif, frames, fps)
    return {"mp4": str(mp4), "gif": str(gif)}


def judging_task(env_id: str, instruction: str | None, task: str | None) -> tuple[str | None, str]:
    """The task that judges success for a rollout of ``env_id`` told ``instruction``, and a line
    saying so. An explicit ``task`` wins; an instruction that is one of a task's phrasings
    selects that task; otherwise the env draws a task per seed (and the line warns)."""
    from envs.crafter_tasks import TASKS, task_of_phrasing
    from envs.workers import check_env_id

    check_env_id(env_id)  # an unknown id names the close ones (or how to install MineRL)
    base = gym.make(env_id).unwrapped
    has_tasks = hasattr(base, "tasks") and not getattr(base, "open_ended", False)
    if task is not None:
        if not has_tasks:
            raise AgentSettingError(f"{env_id} has no task choice: drop --task")
        if task not in TASKS:
            raise TaskError(f"unknown task {task!r}; known tasks: {sorted(TASKS)}")
        return task, f"success is judged by task {task}"
    if instruction and has_tasks:
        found = task_of_phrasing(instruction)
        if found is not None:
            return found, f"success is judged by task {found} (the instruction is one of its phrasings)"
        return None, (
            f"the instruction {instruction!r} is none of the known phrasings: success is judged by the task "
            "the env draws for each seed (named per episode); pass --task to choose it"
        )
    return None, "success is judged by the env's own task for each seed"


def rollout_episode(
    agent: Agent,
    env: gym.Env,
    seed: int,
    instruction: str | None = None,
    deterministic: bool = True,
    cfg_scale: float = 0.0,
    max_steps: int | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    task: str | None = None,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """One episode; ``instruction`` overrides the env's, or the agent follows ``plan``; the env
    judges success by its task: ``task`` when given (envs with a task choice), else the one it
    draws for ``seed``. Each caption shows the instruction the next action is taken under.

    Returns stats plus ``captioned`` frames (one per observation)."""
    told: list[str] = []  # the instruction the agent is given
    frames: list[np.ndarray] = []

    def start(observation: dict[str, Any], info: dict[str, Any]) -> None:
        if plan is not None:
            agent.reset(plan=plan, info=info)
            text = agent.instruction or ""
        else:
            text = instruction if instruction is not None else info["instruction"]
            agent.reset(text or None)
        told.append(text)
        frames.append(caption(observation["image"], [_instruction_line(agent), "step 0"]))

    def record(step: Step) -> None:
        probability = agent.last_action_probability()
        name = action_name(env, step.action)
        agent.observe(step.info)  # a plan may move on: the caption shows what comes next
        if on_step is not None:
            on_step(
                {
                    "step": step.index,
                    "frame": step.observation["image"],
                    "action": step.action,
                    "name": name,
                    "probability": probability,
                }
            )
        frames.append(
            caption(
                step.next_observation["image"],
                [
                    _instruction_line(agent),
                    f"step {step.index}  action {name} (p={probability:.2f})",
                    f"reward {step.reward:+.2f}  return {step.total_reward:+.2f}",
                ],
            )
        )

    outcome = play_episode(
        env,
        agent.acting(deterministic, cfg_scale),
        seed=seed,
        task=task,
        on_reset=start,
        on_step=record,
        max_steps=max_steps,
    )
    row = {
        "seed": seed,
        "task": outcome.info.get("task"),
        "instruction": told[0],
        "success": outcome.success,
        "length": outcome.length,
        "return": outcome.total_reward,
        "captioned": frames,
    }
    if agent.plan is not None:
        row["plan"] = {
            "completed": agent.plan.completed,
            "events": [{"step": t, "instruction": text, "why": why} for t, text, why in agent.plan.events],
        }
    return row


def _instruction_line(agent: Agent) -> str:
    """The caption's first line: the instruction in effect, and the plan step or rule behind it."""
    text = agent.instruction or "(no instruction)"
    if agent.plan is None:
        return text
    source = agent.plan.source
    if source.startswith("step"):
        source += f" of {len(agent.plan.plan.steps)}"
    return f"{text}  [{source}]"


def rollout(
    agent: Agent,
    env_id: str,
    out: str,
    episodes: int = 1,
    seed: int = 0,
    instruction: str | None = None,
    deterministic: bool = True,
    cfg_scale: float = 0.0,
    env_kwargs: dict[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    task: str | None = None,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """``episodes`` episodes: ``episode_XXX.mp4``/``.gif`` and ``stats.json`` in ``out``.
    ``task`` (see ``judging_task``) decides success; the stats name it per episode. With a
    ``plan`` the agent follows it and the stats record when each instruction took effect.
    Ctrl-C (``KeyboardInterrupt``) keeps the finished episodes: their videos, and ``stats.json``
    over them with ``"interrupted": true``; then it propagates."""
    env = gym.make(env_id, **(env_kwargs or {}))
    agent.check_env(env)
    root = Path(out)
    rows: list[dict[str, Any]] = []
    try:
        for index in range(episodes):
            row = rollout_episode(
                agent, env, seed + index, instruction, deterministic, cfg_scale, task=task, plan=plan
            )
            row.update(write_videos(row.pop("captioned"), root / f"episode_{index:03d}"))
            rows.append(row)
            if progress is not None:
                progress(row)
    except KeyboardInterrupt:
        if rows:
            _write_stats(root, {**_stats(env_id, rows), "interrupted": True, "planned": episodes})
        raise
    return _write_stats(root, _stats(env_id, rows))


def _stats(env_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "env_id": env_id,
        "episodes": rows,
        "success_rate": float(np.mean([r["success"] for r in rows])),
        "mean_length": float(np.mean([r["length"] for r in rows])),
        "mean_return": float(np.mean([r["return"] for r in rows])),
    }


def _write_stats(root: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """``stats.json`` written atomically and synced, as every result file is."""
    from envs.data.format import atomic_write_bytes
    from policies.files import describe_write_failure

    root.mkdir(parents=True, exist_ok=True)
    path = root / "stats.json"
    try:
        atomic_write_bytes(path, json.dumps(stats, indent=2).encode())
    except OSError as error:
        raise AgentWriteError(describe_write_failure(error, path, "the videos written are kept")) from None
    return stats
