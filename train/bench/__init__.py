"""Benchmarks: ratios measured side by side in one run (``instructcraft bench``)."""

from __future__ import annotations

import contextlib
import io
import itertools
import tempfile
import time
from collections.abc import Callable
from typing import Any

import crafter
import gymnasium as gym
import numpy as np

import envs
from envs.data.collect import collect
from envs.data.store import Dataset
from envs.experts import default_expert_for


def _timed_steps(env_step: Callable[[int], bool], reset: Callable[[], None], actions: np.ndarray) -> float:
    """Seconds spent inside step calls over ``actions``; resets (on done) are not timed."""
    total = 0.0
    for action in actions:
        start = time.perf_counter()
        done = env_step(int(action))
        total += time.perf_counter() - start
        if done:
            reset()
    return total


def _interleaved_sps(
    make_a: Callable[[], tuple[Callable[[int], bool], Callable[[], None]]],
    make_b: Callable[[], tuple[Callable[[int], bool], Callable[[], None]]],
    actions: np.ndarray,
    rounds: int,
) -> tuple[float, float]:
    """Steps/s of A and B, alternating blocks so machine noise hits both alike."""
    step_a, reset_a = make_a()
    step_b, reset_b = make_b()
    time_a = time_b = 0.0
    for _ in range(rounds):
        time_a += _timed_steps(step_a, reset_a, actions)
        time_b += _timed_steps(step_b, reset_b, actions)
    steps = rounds * len(actions)
    return steps / time_a, steps / time_b


def bench_crafter(steps: int, rounds: int, seed: int = 0) -> dict[str, float]:
    actions = np.random.default_rng(seed).integers(0, 17, steps)

    # Both envs replay the same world (and so the same dynamics) every episode.
    probe = gym.make(envs.CRAFTER_ID, task="place_stone", step_limit=100_000)
    probe.reset(seed=seed)
    world_seed = probe.unwrapped.world_seed

    def raw() -> tuple[Callable[[int], bool], Callable[[], None]]:
        env = crafter.Env(seed=world_seed)

        def reset() -> None:
            env._episode = 0
            env.reset()

        def step(action: int) -> bool:
            return env.step(action)[2]

        reset()
        return step, reset

    def instruct() -> tuple[Callable[[int], bool], Callable[[], None]]:
        # A task random actions rarely finish, so both envs mostly step rather than reset.
        env = gym.make(envs.CRAFTER_ID, task="place_stone", step_limit=100_000)

        def step(action: int) -> bool:
            _, _, terminated, truncated, _ = env.step(action)
            return terminated or truncated

        def reset() -> None:
            env.reset(seed=seed)

        reset()
        return step, reset

    raw_sps, instruct_sps = _interleaved_sps(raw, instruct, actions, rounds)
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

    def make(env: gym.Env, reset_seed: int) -> tuple[Callable[[int], bool], Callable[[], None]]:
        def reset() -> None:
            # Both replay the same level; minigrid's "Sampling rejected" chatter is not output.
            with contextlib.redirect_stdout(io.StringIO()):
                env.reset(seed=reset_seed)

        def step(action: int) -> bool:
            _, _, terminated, truncated, _ = env.step(action)
            return terminated or truncated

        reset()
        return step, reset

    raw_sps, adapter_sps = _interleaved_sps(
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


def bench_env(quick: bool = False) -> dict[str, Any]:
    steps, rounds = (300, 2) if quick else (1000, 5)
    results: dict[str, Any] = {}
    results.update(bench_crafter(steps, rounds))
    results.update(bench_babyai(steps, rounds))
    results.update(bench_collect(10 if quick else 60, workers=2))
    results["goals"] = {"crafter_instruct_over_raw_sps": ">= 0.95", "babyai_over_raw_sps": ">= 0.9"}
    return results


BENCHES: dict[str, Callable[[bool], dict[str, Any]]] = {"env": bench_env}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def bench_policy(quick: bool = False) -> dict[str, Any]:
    """Default model size on CPU: act latency vs history length, cache vs naive, chunk training."""
    import torch

    from agent import Agent
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

    # act latency: a full history (T = long_steps) against a fresh one (T = 1), interleaved.
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
    latency_long, latency_one = float(np.median(full_times)), float(np.median(fresh_times))
    cache_mib = full.cache_nbytes() / 2**20

    # naive (re-run the whole history every step) vs the cache, at T = 256 (64 when quick).
    history = 64 if quick else 256
    clip = torch.from_numpy(frames[:history])[None]
    with torch.no_grad():
        naive = _median_seconds(lambda: policy(clip, [instruction]), 3 if quick else 5)
    cached = Agent(policy)
    cached.reset(instruction)
    for t in range(history - 1):
        cached.act({"image": frames[t]})
    incremental = _median_seconds(lambda: cached.act({"image": frames[history]}), repeats)

    # training throughput: chunks of 64 (each frame encoded once) vs a 64-frame window per step.
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
    chunk_time = sum(_median_seconds(chunk_step, 1) for _ in range(rounds))
    window_time = sum(_median_seconds(window_step, 1) for _ in range(rounds))
    chunk_fps = rounds * chunk_batch * length / chunk_time
    window_fps = rounds * window_batch / window_time
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
        "parameters_trainable": sum(p.numel() for p in train_policy.parameters() if p.requires_grad),
        "threads": torch.get_num_threads(),
        # Goals name the keys this run computed; --quick uses shorter histories than the goals
        # were set for (T512, T256), so its ratios are a smoke check, not the measurement.
        "goals": {
            f"act_latency_T{long_steps}_over_T1": "<= 2.0" + (" (goal set for T512)" if quick else ""),
            f"naive_over_incremental_T{history}": ">= 50" + (" (goal set for T256)" if quick else ""),
        },
    }


BENCHES["policy"] = bench_policy


# The frame encoder and batching that were the default before `vision.encoder` and `train.pack`
# existed: `bench bc` measures the current default against it.
PREVIOUS_BC_DEFAULT = {"vision": {"encoder": "impala", "position_embedding": False}, "pack": False}


def _bc_step(policy: Any, optimizer: Any, batch: dict[str, Any], packed: bool) -> None:
    out = policy(
        batch["frames"],
        list(batch["instruction"]),
        times=batch["times"],
        frame_mask=batch["mask"],
        segments=batch["segments"] if packed else None,
    )
    log_prob = policy.distribution(out.logits).log_prob(batch["actions"])
    loss = -(log_prob * batch["mask"]).sum() / batch["mask"].sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def bench_bc(quick: bool = False, workers: int = 0) -> dict[str, Any]:
    """Two measurements on `make demo`-like data (4 tasks, DART noise 0.25):

    - one BC step fed by the real loader (worker processes, decoding chunks) over one fed by the
      same batches already in memory; same model, same run, interleaved blocks;
    - real (unpadded) training steps per second of the current default (frame encoder + packed
      rows) over the previous default (IMPALA encoder, one padded episode piece per row), both
      from memory, interleaved blocks.
    """
    import dataclasses

    import torch

    from policies import ActionSpaceConfig, InstructionPolicy, PolicyConfig, VisionConfig
    from train.config import TrainConfig
    from train.data import ChunkDataset, make_loader

    steps = 10 if quick else 30
    tasks = ["collect_wood", "collect_drink", "eat_cow", "place_table"]
    action_space = ActionSpaceConfig("Discrete", (17,))
    pack_now = TrainConfig().pack
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/data"
        collect(
            path,
            envs.CRAFTER_ID,
            default_expert_for(envs.CRAFTER_ID),
            40 if quick else 200,
            tasks=tasks,
            workers=2,
            seed=0,
            noise=0.25,
        )
        torch.manual_seed(0)
        config = PolicyConfig(action_space=action_space)
        policy = InstructionPolicy(config).train()
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
        chunks = ChunkDataset(path, 32, pack=pack_now)
        loader = make_loader(chunks, 16, workers=workers, seed=0, start_sample=0, pin_memory=False)

        batches = iter(loader)
        _bc_step(policy, optimizer, next(batches), pack_now)  # warm-up (workers started, text cached)
        loader_time = memory_time = 0.0
        for _ in range(2):
            held = []
            start = time.perf_counter()
            for _ in range(steps // 2):
                batch = next(batches)
                _bc_step(policy, optimizer, batch, pack_now)
                held.append(batch)
            loader_time += time.perf_counter() - start
            start = time.perf_counter()
            for batch in held:
                _bc_step(policy, optimizer, batch, pack_now)
            memory_time += time.perf_counter() - start
        del batches

        # Previous default vs current default: real steps per second of training.
        previous_vision = dataclasses.replace(VisionConfig(), **PREVIOUS_BC_DEFAULT["vision"])
        setups = {
            "previous": (
                PolicyConfig(action_space=action_space, vision=previous_vision),
                PREVIOUS_BC_DEFAULT["pack"],
            ),
            "default": (config, pack_now),
        }
        runs = {}
        for name, (policy_config, packed) in setups.items():
            torch.manual_seed(0)
            model = InstructionPolicy(policy_config).train()
            model_optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            rows = make_loader(
                ChunkDataset(path, 32, pack=packed), 16, workers=0, seed=0, start_sample=0, pin_memory=False
            )
            held = list(itertools.islice(rows, steps // 2 + 1))
            _bc_step(model, model_optimizer, held[0], packed)  # warm-up
            runs[name] = {
                "model": model,
                "optimizer": model_optimizer,
                "batches": held[1:],
                "packed": packed,
                "seconds": 0.0,
                "real": 0,
                "padded": 0,
            }
        for _ in range(2):
            for run in runs.values():
                start = time.perf_counter()
                for batch in run["batches"]:
                    _bc_step(run["model"], run["optimizer"], batch, run["packed"])
                run["seconds"] += time.perf_counter() - start
                run["real"] += int(sum(batch["mask"].sum() for batch in run["batches"]))
                run["padded"] += sum(batch["mask"].numel() for batch in run["batches"])
    real_sps = {name: run["real"] / run["seconds"] for name, run in runs.items()}
    return {
        "loader_step_ms": 1000 * loader_time / steps,
        "inmemory_step_ms": 1000 * memory_time / steps,
        "loader_over_inmemory_step_time": loader_time / memory_time,
        "previous_default_real_steps_per_s": real_sps["previous"],
        "default_real_steps_per_s": real_sps["default"],
        "previous_default_real_fraction": runs["previous"]["real"] / runs["previous"]["padded"],
        "default_real_fraction": runs["default"]["real"] / runs["default"]["padded"],
        "real_steps_per_s_default_over_previous": real_sps["default"] / real_sps["previous"],
        "batch": f"16 rows x 32 steps, {workers} loader workers; default: {config.vision.encoder} encoder, "
        f"{config.vision.frame_tokens} tokens, pack={pack_now}; previous: {PREVIOUS_BC_DEFAULT}",
        "goals": {
            "loader_over_inmemory_step_time": "<= 1.1",
            "real_steps_per_s_default_over_previous": ">= 2.0",
        },
    }


BENCHES["bc"] = bench_bc


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


BENCHES["attention"] = bench_attention


def _image_only_env(env_id: str, **env_kwargs: Any) -> Any:
    """The env with its image as the whole observation: what SB3's stock CnnPolicy reads."""
    import gymnasium as gym

    env = gym.make(env_id, **env_kwargs)
    return gym.wrappers.TransformObservation(
        env, lambda observation: observation["image"], env.observation_space["image"]
    )


def _encoder_cost_ratio(fusion: Any, cnn: Any, frames: int = 128) -> float:
    """Forward + backward time per frame: our frame encoder over SB3's NatureCNN extractor."""
    import torch

    device = next(cnn.policy.parameters()).device
    images = torch.randint(0, 256, (frames, 64, 64, 3), dtype=torch.uint8, device=device)
    channels_first = images.permute(0, 3, 1, 2).float()
    ours = fusion.model.frame_encoder
    theirs = cnn.policy.features_extractor

    def ours_step() -> None:
        ours(images).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def theirs_step() -> None:
        theirs(channels_first / 255.0).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return _median_seconds(ours_step, 3) / _median_seconds(theirs_step, 3)


def bench_rl(quick: bool = False) -> dict[str, Any]:
    """PPO steps/s with the fusion policy (default model, sequence PPO) over SB3's stock
    CnnPolicy PPO on the same env, n_envs, n_steps, batch size and epochs; rollouts of the two
    alternate so machine noise hits both alike. Also the fusion run's wall-time split."""
    from functools import partial

    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    from policies import PolicyConfig
    from train.config import RLConfig, RunConfig
    from train.rl import build_ppo, make_env

    n_envs, n_steps, rounds = (4, 32, 1) if quick else (8, 64, 3)
    rl = RLConfig(n_envs=n_envs, vec_env="dummy", n_steps=n_steps, batch_size=128, n_epochs=4, seed=0)
    torch.manual_seed(0)
    fusion = build_ppo(
        RunConfig(policy=PolicyConfig(), rl=rl), make_env(envs.CRAFTER_ID, n_envs, "dummy", 0, 128)
    )
    cnn_env = make_vec_env(
        partial(_image_only_env, envs.CRAFTER_ID), n_envs=n_envs, seed=0, vec_env_cls=DummyVecEnv
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"  # both on the same device
    cnn = PPO("CnnPolicy", cnn_env, n_steps=n_steps, batch_size=128, n_epochs=4, seed=0, device=device)
    per_rollout = n_envs * n_steps
    for algo in (fusion, cnn):  # warm-up: text encoder cache, allocator, env processes
        algo.learn(per_rollout)
    fusion.timings.clear()
    seconds = {"fusion": 0.0, "cnn": 0.0}
    for _ in range(rounds):
        for name, algo in (("fusion", fusion), ("cnn", cnn)):
            start = time.perf_counter()
            algo.learn(per_rollout, reset_num_timesteps=False)
            seconds[name] += time.perf_counter() - start
    fusion.env.close()
    cnn_env.close()
    steps = rounds * per_rollout
    encoder_ratio = _encoder_cost_ratio(fusion, cnn)
    split = dict(fusion.timings)
    total = sum(split.values())
    return {
        "fusion_ppo_sps": steps / seconds["fusion"],
        "cnn_ppo_sps": steps / seconds["cnn"],
        "fusion_ppo_over_cnn_ppo_sps": seconds["cnn"] / seconds["fusion"],
        "fusion_env_fraction": split.get("env", 0.0) / total,
        "fusion_inference_fraction": split.get("inference", 0.0) / total,
        "fusion_update_fraction": split.get("update", 0.0) / total,
        "frame_encoder_over_naturecnn_train_time": encoder_ratio,
        "device": device,
        "setup": f"Crafter-Instruct, {n_envs} envs (DummyVecEnv) x {n_steps} steps, batch 128, 4 epochs, "
        f"{rounds} rollouts each; default model vs SB3 CnnPolicy (NatureCNN) on the image",
        "goals": {"fusion_ppo_over_cnn_ppo_sps": ">= 0.5"},
    }


BENCHES["rl"] = bench_rl
