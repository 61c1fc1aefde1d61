"""``bench policy``: the default model on CPU: act latency against history length, the
incremental cache against re-running the whole history, and chunked training throughput."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from train.bench.timing import median_seconds


def bench_policy(quick: bool = False) -> dict[str, Any]:
    """Default model size on CPU: act latency vs history length, cache vs naive, chunk training."""
    import torch

    from policies import InstructionPolicy, PolicyConfig

    torch.manual_seed(0)
    config = PolicyConfig()
    policy = InstructionPolicy(config).eval()
    rng = np.random.default_rng(0)
    height, width = config.vision.image_size
    frames = rng.integers(0, 256, (600, height, width, 3), dtype=np.uint8)
    instruction = "collect wood"
    long_steps = 128 if quick else 512
    repeats = 10 if quick else 40
    latency_long, latency_one, cache_mib = _act_latency(policy, frames, instruction, long_steps, repeats)
    history = 64 if quick else 256
    naive, incremental = _naive_and_incremental(policy, frames, instruction, history, quick, repeats)
    chunk_fps, window_fps, parameters = _training_frames_per_s(config, frames, rng, instruction, quick)
    return {
        "act_latency_ms_T1": 1000 * latency_one,
        f"act_latency_ms_T{long_steps}": 1000 * latency_long,
        f"act_latency_T{long_steps}_over_T1": latency_long / latency_one,
        f"naive_ms_T{history}": 1000 * naive,
        f"incremental_ms_T{history}": 1000 * incremental,
        f"naive_over_incremental_T{history}": naive / incremental,
        f"cache_mib_T{long_steps}": cache_mib,
        "chunk_train_frames_per_s": chunk_fps,
        "window_train_frames_per_s": window_fps,
        "chunk_train_frames_per_s_over_window": chunk_fps / window_fps,
        "parameters_trainable": parameters,
        "threads": torch.get_num_threads(),
        # Goals name the keys this run computed; --quick uses shorter histories than the goals
        # were set for (T512, T256), so its ratios are a smoke check, not the measurement.
        "goals": {
            f"act_latency_T{long_steps}_over_T1": "<= 2.0" + (" (goal set for T512)" if quick else ""),
            f"naive_over_incremental_T{history}": ">= 50" + (" (goal set for T256)" if quick else ""),
        },
    }


def _act_latency(
    policy: Any, frames: np.ndarray, instruction: str, long_steps: int, repeats: int
) -> tuple[float, float, float]:
    """Median act seconds with a full history (T = long_steps) and with a fresh one (T = 1),
    interleaved; and the full history's cache in MiB."""
    from agent import Agent

    full, fresh = Agent(policy), Agent(policy)
    full.reset(instruction)
    for t in range(long_steps - 1):
        full.act({"image": frames[t]})
    full_times, fresh_times = [], []
    for i in range(repeats):
        fresh.reset(instruction)
        start = time.perf_counter()
        fresh.act({"image": frames[i]})
        fresh_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        full.act({"image": frames[long_steps + i]})
        full_times.append(time.perf_counter() - start)
    return float(np.median(full_times)), float(np.median(fresh_times)), full.cache_nbytes() / 2**20


def _naive_and_incremental(
    policy: Any, frames: np.ndarray, instruction: str, history: int, quick: bool, repeats: int
) -> tuple[float, float]:
    """Seconds of one step at T = ``history``: re-running the whole history (naive) and acting
    with the cache (incremental)."""
    import torch

    from agent import Agent

    clip = torch.from_numpy(frames[:history])[None]
    with torch.no_grad():
        naive = median_seconds(lambda: policy(clip, [instruction]), 3 if quick else 5)
    cached = Agent(policy)
    cached.reset(instruction)
    for t in range(history - 1):
        cached.act({"image": frames[t]})
    return naive, median_seconds(lambda: cached.act({"image": frames[history]}), repeats)


def _training_frames_per_s(
    config: Any, frames: np.ndarray, rng: np.random.Generator, instruction: str, quick: bool
) -> tuple[float, float, int]:
    """Training throughput in frames per second: chunks of 64 (each frame encoded once) against a
    64-frame window per step; and the trainable parameter count."""
    import torch

    from policies import InstructionPolicy

    height, width = config.vision.image_size
    train_policy = InstructionPolicy(config).train()
    optimizer = torch.optim.AdamW([p for p in train_policy.parameters() if p.requires_grad], lr=1e-4)
    length, chunk_batch, window_batch = 64, 2 if quick else 4, 2 if quick else 4
    chunk = torch.from_numpy(frames[: chunk_batch * length].reshape(chunk_batch, length, height, width, 3))
    targets = torch.from_numpy(rng.integers(0, 17, (chunk_batch, length)))

    def chunk_step() -> None:
        out = train_policy(chunk, [instruction] * chunk_batch)
        loss = -train_policy.distribution(out.logits).log_prob(targets).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    windows = torch.from_numpy(
        frames[: window_batch * length].reshape(window_batch, length, height, width, 3)
    )

    def window_step() -> None:
        # One training sample per window: the last step's output, as frame stacking does.
        out = train_policy(windows, [instruction] * window_batch)
        loss = -train_policy.distribution(out.logits[:, -1]).log_prob(targets[:window_batch, -1]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    chunk_step(), window_step()  # warm-up
    rounds = 2 if quick else 4
    chunk_time = sum(median_seconds(chunk_step, 1) for _ in range(rounds))
    window_time = sum(median_seconds(window_step, 1) for _ in range(rounds))
    parameters = sum(p.numel() for p in train_policy.parameters() if p.requires_grad)
    return rounds * chunk_batch * length / chunk_time, rounds * window_batch / window_time, parameters
