"""``bench env``: Crafter-Instruct and BabyAI adapters against the raw envs, expert collection
(and the same collection through a local Ray against the process pool), and dataset chunk reads
against decompressing whole episodes."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from typing import Any

import crafter
import gymnasium as gym
import numpy as np

import envs
from envs.data.collect import collect
from envs.data.store import Dataset
from envs.experts import default_expert_for
from train.bench.timing import Stepper, interleaved_sps


def bench_crafter(steps: int, rounds: int, seed: int = 0) -> dict[str, float]:
    actions = np.random.default_rng(seed).integers(0, 17, steps)

    # Both envs replay the same world (and so the same dynamics) every episode.
    probe = gym.make(envs.CRAFTER_ID, task="place_stone", step_limit=100_000)
    probe.reset(seed=seed)
    world_seed = probe.unwrapped.world_seed

    def raw() -> Stepper:
        env = crafter.Env(seed=world_seed)

        def reset() -> None:
            env._episode = 0
            env.reset()

        def step(action: int) -> bool:
            return env.step(action)[2]

        reset()
        return step, reset

    def instruct() -> Stepper:
        # A task random actions rarely finish, so both envs mostly step rather than reset.
        env = gym.make(envs.CRAFTER_ID, task="place_stone", step_limit=100_000)

        def step(action: int) -> bool:
            _, _, terminated, truncated, _ = env.step(action)
            return terminated or truncated

        def reset() -> None:
            env.reset(seed=seed)

        reset()
        return step, reset

    raw_sps, instruct_sps = interleaved_sps(raw, instruct, actions, rounds)
    return {
        "crafter_raw_sps": raw_sps,
        "crafter_instruct_sps": instruct_sps,
        "crafter_instruct_over_raw_sps": instruct_sps / raw_sps,
    }


def bench_babyai(steps: int, rounds: int, level: str = "GoToLocal", seed: int = 0) -> dict[str, float]:
    from minigrid.wrappers import RGBImgPartialObsWrapper

    actions = np.random.default_rng(seed).integers(0, 7, steps)
    adapter = gym.make(envs.babyai_id(level))
    adapter.reset(seed=seed)
    level_seed = adapter.unwrapped.level_seed

    def make(env: gym.Env, reset_seed: int) -> Stepper:
        def reset() -> None:
            # Both replay the same level; minigrid's "Sampling rejected" chatter is not output.
            with contextlib.redirect_stdout(io.StringIO()):
                env.reset(seed=reset_seed)

        def step(action: int) -> bool:
            _, _, terminated, truncated, _ = env.step(action)
            return terminated or truncated

        reset()
        return step, reset

    raw_sps, adapter_sps = interleaved_sps(
        lambda: make(RGBImgPartialObsWrapper(gym.make(f"BabyAI-{level}-v0"), tile_size=8), level_seed),
        lambda: make(adapter, seed),
        actions,
        rounds,
    )
    return {
        "babyai_raw_sps": raw_sps,
        "babyai_sps": adapter_sps,
        "babyai_over_raw_sps": adapter_sps / raw_sps,
    }


def bench_collect(episodes: int, workers: int, seed: int = 0) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        stats = collect(
            f"{tmp}/data",
            envs.CRAFTER_ID,
            default_expert_for(envs.CRAFTER_ID),
            episodes,
            workers=workers,
            seed=seed,
        )
        dataset = Dataset(f"{tmp}/data")
        rng = np.random.default_rng(seed)
        chunk_time = full_time = 0.0
        reads = 0
        for _ in range(50):
            number = int(rng.integers(len(dataset)))
            length = dataset.episodes[number]["length"]
            start = int(rng.integers(max(length - 16, 1)))
            dataset.close()  # cold handles: both reads pay for opening the file
            t0 = time.perf_counter()
            dataset.chunk(number, start, start + 16)
            t1 = time.perf_counter()
            dataset.close()
            for other in range(len(dataset)):
                dataset.images(other)
            t2 = time.perf_counter()
            dataset.close()
            chunk_time += t1 - t0
            full_time += t2 - t1
            reads += 1
    return {
        "collect_episodes_per_s": stats["episodes_per_s"],
        "collect_steps_per_s": stats["steps"] / stats["seconds"],
        "collect_workers": workers,
        "collect_success_rate": stats["success_rate"],
        "dataset_chunk16_read_ms": 1000 * chunk_time / reads,
        "dataset_full_decompress_ms": 1000 * full_time / reads,
    }


def bench_ray_over_pool(episodes: int, rounds: int = 2, seed: int = 0) -> dict[str, Any]:
    """The same collection (``episodes`` Crafter planner episodes, the same seeds) through the
    process pool (2 workers) and through a local Ray with 2 CPUs, alternating ``rounds`` times so
    machine noise hits both; Ray's start-up is timed apart (a cluster pays it once)."""
    from envs.ray_rollouts import ray_rollouts

    try:
        import ray
    except ImportError:
        return {"ray_over_pool_collect_eps": None, "ray_note": "Ray is not installed (the [ray] extra)"}
    expert = default_expert_for(envs.CRAFTER_ID)

    def seconds(root: str) -> float:
        return collect(root, envs.CRAFTER_ID, expert, episodes, workers=2, seed=seed)["seconds"]

    pool = on_ray = 0.0
    started = time.perf_counter()
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING"
    )  # kept for every round
    start_s = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for number in range(rounds):
                pool += seconds(f"{tmp}/pool{number}")
                with ray_rollouts():  # the Ray started above
                    on_ray += seconds(f"{tmp}/ray{number}")
    finally:
        ray.shutdown()
    return {
        "ray_over_pool_collect_eps": pool / on_ray,
        "ray_collect_episodes_per_s": rounds * episodes / on_ray,
        "pool_collect_episodes_per_s": rounds * episodes / pool,
        "ray_start_s": start_s,
    }


def bench_env(quick: bool = False) -> dict[str, Any]:
    steps, rounds = (300, 2) if quick else (1000, 5)
    results: dict[str, Any] = {}
    results.update(bench_crafter(steps, rounds))
    results.update(bench_babyai(steps, rounds))
    results.update(bench_collect(10 if quick else 60, workers=2))
    results.update(bench_ray_over_pool(10 if quick else 60))
    results["goals"] = {
        "crafter_instruct_over_raw_sps": ">= 0.95",
        "babyai_over_raw_sps": ">= 0.9",
        "ray_over_pool_collect_eps": ">= 0.9",
    }
    return results
