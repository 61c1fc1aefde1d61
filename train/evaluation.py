"""Periodic evaluation during training: calls down into agent/ and logs to TensorBoard."""

from __future__ import annotations

from typing import Any

from agent import Agent
from agent.evaluate import evaluate
from envs.dataset import Dataset
from train.config import RunConfig


def periodic_evaluator(run: RunConfig, data: str) -> Any:
    """A callable (policy, step, writer) -> result for ``train_bc``; None when not asked for."""
    cfg = run.train
    if cfg.eval_episodes <= 0:
        return None
    dataset = Dataset(data)
    env_id = cfg.eval_env or dataset.metadata["env_id"]
    tasks = sorted({entry["task"] for entry in dataset.episodes}) if "Crafter" in env_id else None

    def run_eval(policy: Any, step: int, writer: Any) -> dict[str, Any]:
        agent = Agent(policy, device=str(policy.device))
        result = evaluate(env_id, cfg.eval_episodes, agent=agent, tasks=tasks, seed=200_000)
        if writer is not None:
            writer.add_scalar("eval/success_rate", result["success_rate"], step)
            for task, row in result["tasks"].items():
                writer.add_scalar(f"eval/success/{task}", row["success_rate"], step)
        return {"success_rate": result["success_rate"], "tasks": result["tasks"]}

    return run_eval
