"""The same seed and actions give the same episode: across processes, with or without
rendering, through gymnasium's vector envs, and when a stored dataset is replayed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.crafter_tasks import TASKS
from envs.data.collect import collect
from envs.data.store import Dataset, DatasetWriter
from envs.replay import replay_dataset, step_digests

ROOT = Path(__file__).resolve().parents[2]
STEPS = 500
# step_limit past one crafter day (300 steps): random play reaches the night (steps ~150-270).
CASES = [(envs.CRAFTER_ID, seed, {"step_limit": 1000}) for seed in range(5)] + [
    (envs.CRAFTER_OPEN_ID, seed, {}) for seed in range(2)
]

# Runs in a fresh interpreter: allocates `junk` objects first, so that its memory layout (and
# with PYTHONHASHSEED its hashing) differs from the other run's; prints step digests as JSON.
ROLLOUT = """
import json, sys
import gymnasium as gym
import numpy as np
import envs
from envs.replay import step_digests

cases, steps, junk = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
keep = [[object()] * (i % 7) for i in range(junk)]
out = []
for env_id, seed, kwargs in cases:
    env = gym.make(env_id, **kwargs)
    world = env.unwrapped.world
    nights = []
    step = env.step
    def counting_step(action, step=step, world=world):
        result = step(action)
        nights.append(bool(world.daylight < 0.5))
        return result
    env.step = counting_step
    actions = np.random.default_rng(seed).integers(0, env.action_space.n, steps).tolist()
    out.append({"digests": step_digests(env, seed, actions), "night_steps": sum(nights)})
print(json.dumps(out))
"""


def _run_rollouts(hash_seed: str, junk: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", ROLLOUT, json.dumps(CASES), str(STEPS), str(junk)],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_difference(a: list[str], b: list[str]) -> int | None:
    for step, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return step
    return None if len(a) == len(b) else min(len(a), len(b))


@pytest.mark.slow
def test_same_seed_and_actions_give_the_same_episode_in_fresh_processes() -> None:
    processes = [_run_rollouts("1", 0), _run_rollouts("2", 5000)]
    runs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        runs.append(json.loads(stdout))
    for (env_id, seed, _), first, second in zip(CASES, *runs, strict=True):
        assert first["night_steps"] > 0, f"{env_id} seed {seed} never reached the night"
        step = _first_difference(first["digests"], second["digests"])
        assert step is None, f"{env_id} seed {seed}: the processes differ from step {step}"


def test_rendering_at_another_size_changes_nothing() -> None:
    # A task random play rarely finishes; with seed 6 the player lives through the night.
    kwargs = {"task": "place_stone", "step_limit": 1000}
    plain = gym.make(envs.CRAFTER_ID, **kwargs)
    rendering = gym.make(envs.CRAFTER_ID, render_size=(96, 96), **kwargs)
    plain.reset(seed=6)
    rendering.reset(seed=6)
    world = rendering.unwrapped.world
    nights = 0
    for step, action in enumerate(np.random.default_rng(6).integers(0, 17, 300).tolist()):
        frame = rendering.render()
        assert frame.shape == (96, 96, 3)
        assert np.array_equal(frame, rendering.render()), f"render() is not repeatable at step {step}"
        a, reward_a, term_a, trunc_a, _ = plain.step(action)
        b, reward_b, term_b, trunc_b, _ = rendering.step(action)
        assert np.array_equal(a["image"], b["image"]), f"observations differ at step {step + 1}"
        assert (reward_a, term_a, trunc_a) == (reward_b, term_b, trunc_b)
        nights += world.daylight < 0.5
        if term_a or trunc_a:
            plain.reset(seed=step)
            rendering.reset(seed=step)
    assert nights > 50, f"only {nights} night steps: the test needs a night"


def _crafter_fns(steps: int) -> list:
    return [partial(gym.make, envs.CRAFTER_ID, task=task, step_limit=steps) for task in TASKS][:3]


@pytest.mark.parametrize(
    "make_vector",
    [
        pytest.param(lambda: gym.vector.AsyncVectorEnv(_crafter_fns(6)), id="AsyncVectorEnv-defaults"),
        pytest.param(
            lambda: gym.vector.AsyncVectorEnv(_crafter_fns(6), copy=False), id="AsyncVectorEnv-no-copy"
        ),
        pytest.param(
            lambda: gym.make_vec(envs.CRAFTER_ID, num_envs=2, vectorization_mode="async", step_limit=6),
            id="make_vec-async",
        ),
        pytest.param(
            lambda: gym.make_vec(
                envs.babyai_id("GoToLocal"), num_envs=2, vectorization_mode="async", max_steps=6
            ),
            id="make_vec-async-babyai",
        ),
    ],
)
def test_standard_async_vectorization_delivers_the_instruction(make_vector) -> None:
    vec = make_vector()
    try:
        obs, info = vec.reset(seed=0)
        seen = set()
        for step in range(30):
            for i in range(vec.num_envs):
                assert obs["instruction"][i] == info["instruction"][i], f"env {i} step {step}"
                seen.add(obs["instruction"][i])
            obs, _, _, _, info = vec.step(vec.action_space.sample())
    finally:
        vec.close()
    # Episodes of 6 steps resample their instruction: a buffer read once would show one text.
    assert len(seen) > vec.num_envs


def _collect(out: Path, workers: int) -> Dataset:
    collect(
        str(out),
        envs.CRAFTER_ID,
        "crafter_planner",
        4,
        tasks=["eat_cow", "collect_drink"],
        workers=workers,
        seed=11,
    )
    return Dataset(out)


def test_replay_finds_a_planted_action_change(tmp_path: Path) -> None:
    dataset = _collect(tmp_path / "data", workers=1)
    assert all(result.ok for result in replay_dataset(tmp_path / "data")), replay_dataset(tmp_path / "data")
    episode = dataset.episode(1)
    opposite = {1: 2, 2: 1, 3: 4, 4: 3}  # move left/right/up/down: the player turns the other way
    planted = next(t for t, action in enumerate(episode.actions) if int(action) in opposite)
    episode.actions[planted] = opposite[int(episode.actions[planted])]
    with DatasetWriter(
        tmp_path / "planted",
        env_id=dataset.metadata["env_id"],
        image_shape=tuple(dataset.metadata["image_shape"]),
        action_space=dataset.metadata["action_space"],
        info=dataset.metadata["info"],
    ) as writer:
        writer.add(dataset.episode(0))
        writer.add(episode)
    first, second = replay_dataset(tmp_path / "planted")
    assert first.ok
    assert (second.first_mismatch, second.field) == (planted + 1, "frame"), str(second)
    assert f"first mismatch at step {planted + 1}" in str(second)


@pytest.mark.slow
def test_collection_with_one_or_two_workers_gives_the_same_dataset(tmp_path: Path) -> None:
    one, two = _collect(tmp_path / "one", workers=1), _collect(tmp_path / "two", workers=2)
    assert len(one) == len(two) == 4
    for number in range(len(one)):
        a, b = one.episode(number), two.episode(number)
        assert (a.instruction, a.task, a.seed) == (b.instruction, b.task, b.seed)
        for name in ("images", "actions", "rewards", "terminated", "truncated"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), f"episode {number} {name}"
    for path in (tmp_path / "one", tmp_path / "two"):
        results = replay_dataset(path)
        assert all(result.ok for result in results), [str(result) for result in results]


def test_step_digests_see_every_frame() -> None:
    env = gym.make(envs.CRAFTER_ID, task="collect_wood")
    first = step_digests(env, 0, [1, 1, 3])
    assert first == step_digests(env, 0, [1, 1, 3])
    other = step_digests(env, 0, [1, 1, 4])  # the last move faces down instead of up
    assert first[:3] == other[:3] and first[3] != other[3]
