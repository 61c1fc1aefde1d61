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
    memory = _long_episode_memory(300 if quick else 2000, 128 if quick else 512)
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
        **memory,
        "threads": torch.get_num_threads(),
        # Goals name the keys this run computed; --quick uses shorter histories than the goals
        # were set for (T512, T256), so its ratios are a smoke check, not the measurement.
        "goals": {
            f"act_latency_T{long_steps}_over_T1": "<= 2.0" + (" (goal set for T512)" if quick else ""),
            f"naive_over_incremental_T{history}": ">= 50" + (" (goal set for T256)" if quick else ""),
            "rss_growth_mib_after_window": "<= 8, flat once the window is full"
            + (" (goal set for T512 over 2000 steps)" if quick else ""),
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


def _long_episode_memory(steps: int, window: int) -> dict[str, Any]:
    """Resident memory of an evaluation worker over a long episode, in a fresh process.

    The worker holds what ``eval`` holds: the default model with a ``window``-frame history, an
    :class:`agent.Agent` and a real Crafter env, stepping with sampled actions. Crafter episodes
    of an untrained agent end early (it dies), so the env is reset when one ends while the agent
    keeps its history: the agent sees one ``steps``-long stream, the part whose memory could grow.
    RSS is read after the first step, once the window is full, and after the last step.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        rss = pool.apply(_measure_rss, (steps, window))
    full = min(window, steps)
    return {
        f"rss_mib_step1_T{window}": rss[0],
        f"rss_mib_step{full}_T{window}": rss[1],
        f"rss_mib_step{steps}_T{window}": rss[2],
        "rss_growth_mib_after_window": rss[2] - rss[1],
        "long_episode_steps": steps,
    }


def _rss_mib() -> float:
    """This process's resident set in MiB (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_rss(steps: int, window: int) -> tuple[float, float, float]:
    import dataclasses

    import gymnasium as gym
    import torch

    import envs  # noqa: F401  (registers the instructcraft ids)
    from agent import Agent
    from policies import InstructionPolicy, PolicyConfig

    torch.set_num_threads(1)  # as an eval worker
    torch.manual_seed(0)
    config = PolicyConfig()
    config = dataclasses.replace(
        config, fusion_kwargs=dataclasses.replace(config.fusion_kwargs, max_history=window)
    )
    agent = Agent(InstructionPolicy(config).eval())
    env = gym.make("instructcraft/Crafter-Instruct-v0", task="collect_diamond")
    observation, info = env.reset(seed=0)
    agent.reset(info["instruction"])
    agent.generator.manual_seed(0)
    readings = []
    for step in range(1, steps + 1):
        action = agent.act(observation)
        observation, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            observation, _ = env.reset()
        if step in (1, min(window, steps), steps):
            readings.append(_rss_mib())
    env.close()
    return readings[0], readings[-2], readings[-1]
