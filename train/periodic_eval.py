"""Periodic evaluation during training: calls down into agent/ and logs to TensorBoard."""

from __future__ import annotations

from typing import Any

from agent import Agent
from agent.evaluate import evaluate
from envs import env_kind
from envs.data.store import Dataset
from train.config import RunConfig


def periodic_evaluator(run: RunConfig, data: str) -> Any:
    """A callable (policy, step, writer) -> result for ``train_bc``; None when not asked for."""
    cfg = run.train
    if cfg.eval_episodes <= 0:
        return None
    dataset = Dataset(data)
    env_id = cfg.eval_env or dataset.metadata["env_id"]
    tasks = sorted({entry["task"] for entry in dataset.episodes}) if env_kind(env_id).task_choice else None

    def run_eval(policy: Any, step: int, writer: Any) -> dict[str, Any]:
        agent = Agent(policy, device=str(policy.device))
        result = evaluate(env_id, cfg.eval_episodes, agent=agent, tasks=tasks, seed=200_000)
        if writer is not None:
            writer.add_scalar("eval/success_rate", result["success_rate"], step)
            for task, row in result["tasks"].items():
                writer.add_scalar(f"eval/success/{task}", row["success_rate"], step)
            log_attention_and_video(policy, env_id, tasks[0] if tasks else None, step, writer)
        return {"success_rate": result["success_rate"], "tasks": result["tasks"]}

    return run_eval


def gif_bytes(frames: list[Any], fps: int = 10) -> bytes:
    import io

    from envs.video import write_video

    buffer = io.BytesIO()
    write_video(buffer, frames, fps, format="gif")
    return buffer.getvalue()


def log_video(writer: Any, tag: str, frames: list[Any], step: int, fps: int = 10) -> None:
    """An animated GIF in TensorBoard's image plugin (no moviepy needed)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = frames[0].shape[:2]
    image = Summary.Image(
        height=height, width=width, colorspace=3, encoded_image_string=gif_bytes(frames, fps)
    )
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def log_attention_and_video(policy: Any, env_id: str, task: str | None, step: int, writer: Any) -> None:
    """One rollout with attention captured: the timeline as an image and the episode as a video."""
    from agent.attention import record_rollout, timeline_image
    from agent.rollout import caption

    agent = Agent(policy, device=str(policy.device), capture_attention=True)
    recording = record_rollout(
        agent, env_id, seed=300_000 + step, env_kwargs={"task": task} if task else None, max_steps=300
    )
    writer.add_image("eval/attention_timeline", timeline_image(recording), step, dataformats="HWC")
    frames = [
        caption(frame, [recording.instruction, f"step {t}  {recording.actions[t]}"], scale=2)
        for t, frame in enumerate(recording.frames)
    ]
    log_video(writer, "eval/rollout", frames, step)
