"""``bench attention``: acting with attention capture against plain acting, and the size of the
HTML viewer for a long rollout."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import gymnasium as gym
import numpy as np

import envs


def bench_attention(quick: bool = False) -> dict[str, Any]:
    """Act with attention capture (explicit weights + the per-step record) over plain act, same
    default model and frames, interleaved; plus the viewer's size for a 1,000-step rollout."""
    import torch

    from agent import Agent
    from agent.attention import capture_step
    from policies import InstructionPolicy, PolicyConfig

    torch.manual_seed(0)
    policy = InstructionPolicy(PolicyConfig()).eval()
    steps = 64 if quick else 256
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (steps, 64, 64, 3), dtype=np.uint8)
    plain, capturing = Agent(policy), Agent(policy, capture_attention=True)
    plain.reset("collect wood")
    capturing.reset("collect wood")
    plain_time = capture_time = 0.0
    for frame in frames:
        start = time.perf_counter()
        plain.act({"image": frame})
        plain_time += time.perf_counter() - start
        start = time.perf_counter()
        capturing.act({"image": frame})
        capture_step(capturing)
        capture_time += time.perf_counter() - start
    size = viewer_size_for(1000 if not quick else 200)
    return {
        "plain_act_ms": 1000 * plain_time / steps,
        "capture_act_ms": 1000 * capture_time / steps,
        "capture_over_plain_act_time": capture_time / plain_time,
        "history_steps": steps,
        "viewer_bytes_1000_steps" if not quick else "viewer_bytes_200_steps": size,
        "goals": {"capture_over_plain_act_time": "<= 1.3"},
    }


def viewer_size_for(steps: int, window: int = 512, blocks: int = 2, heads: int = 4, tokens: int = 16) -> int:
    """Bytes of the HTML viewer for a ``steps``-long Crafter rollout with the default model's
    attention shape (real frames from a random walk, softmax weights over the window)."""
    from agent.attention import AttentionRecording, StepAttention, viewer_html

    env = gym.make(envs.CRAFTER_ID, task="place_stone", step_limit=100_000)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    recording = AttentionRecording("place a stone", "cross_attention", tokens_per_frame=tokens)
    for t in range(steps):
        recording.frames.append(obs["image"])
        visible = np.arange(max(0, t - window + 1), t + 1)
        logits = rng.normal(size=(blocks, heads, len(visible), tokens)) * 2
        weights = np.exp(logits) / np.exp(logits).sum(axis=(2, 3), keepdims=True)
        frame_weights = weights.sum(-1)
        top = np.argsort(-frame_weights.mean((0, 1)))[:4]
        recording.steps.append(StepAttention(visible, frame_weights, visible[top], weights[:, :, top]))
        recording.actions.append("noop")
        recording.probabilities.append(1.0)
        recording.rewards.append(0.0)
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(0, 17)))
        if terminated or truncated:
            obs, _ = env.reset()
    with tempfile.TemporaryDirectory() as tmp:
        return viewer_html(recording, f"{tmp}/viewer.html").stat().st_size
