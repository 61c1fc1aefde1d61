from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.crafter_tasks import TASKS
from envs.data.collect import run_episode
from envs.experts import make_expert


def make(**kwargs) -> gym.Env:
    return gym.make(envs.CRAFTER_ID, **kwargs)


def test_at_least_eight_tasks_with_three_phrasings() -> None:
    assert len(TASKS) >= 8
    assert all(len(task.phrasings) >= 3 for task in TASKS.values())
    one_step = {name for name, task in TASKS.items() if task.steps == 1}
    assert {"collect_wood", "collect_sapling", "collect_drink", "eat_cow"} <= one_step
    assert {"place_table", "make_wood_pickaxe", "place_plant", "collect_stone"} <= set(TASKS) - one_step


def test_phrasing_sampled_per_episode_unless_fixed() -> None:
    env = make(task="collect_wood")
    seen = {env.reset(seed=s)[1]["instruction"] for s in range(30)}
    assert seen == set(TASKS["collect_wood"].phrasings)
    fixed = make(task="collect_wood", phrasing=1)
    assert {fixed.reset(seed=s)[1]["instruction"] for s in range(10)} == {TASKS["collect_wood"].phrasings[1]}


def test_task_list_and_instruction_override() -> None:
    env = make(task=["eat_cow", "collect_drink"])
    tasks = {env.reset(seed=s)[1]["task"] for s in range(20)}
    assert tasks == {"eat_cow", "collect_drink"}
    env = make(task="eat_cow", instruction="go get me a steak")
    obs, info = env.reset(seed=0)
    assert obs["instruction"] == info["instruction"] == "go get me a steak" and info["task"] == "eat_cow"
    obs, info = env.reset(seed=0, options={"task": "collect_wood", "instruction": "wood please"})
    assert (info["task"], obs["instruction"]) == ("collect_wood", "wood please")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "fly"}, r"unknown Crafter-Instruct task\(s\) \['fly'\]"),
        ({"task": []}, "task list is empty"),
        ({"reward_mode": "dense"}, "reward_mode must be one of task, crafter, task_health, got 'dense'"),
        ({"step_limit": 0}, "step_limit must be a positive integer, got 0"),
        ({"phrasing": 9, "task": "eat_cow"}, "phrasing 9 out of range"),
        ({"instruction": "x" * 300}, "300 characters, the limit is 256"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_same_seed_same_world_for_every_task() -> None:
    frames = {task: make(task=task).reset(seed=5)[0]["image"] for task in TASKS}
    first = next(iter(frames.values()))
    assert all(np.array_equal(first, frame) for frame in frames.values())


def test_success_terminates_with_reward_one() -> None:
    env = make(task="collect_wood")
    episode = run_episode(env, make_expert("crafter_planner"), 0, None, envs.CRAFTER_ID)
    assert episode.success
    assert episode.terminated[-1] and not episode.truncated[-1]
    assert episode.rewards.sum() == 1.0 and episode.rewards[-1] == 1.0


def test_truncation_is_separate_from_termination() -> None:
    env = make(task="place_stone", step_limit=7)
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(7)]
    assert flags[:-1] == [(False, False)] * 6
    assert flags[-1] == (False, True)


def test_crafter_reward_mode_and_info() -> None:
    env = make(task="collect_wood", reward_mode="crafter")
    obs, info = env.reset(seed=0)
    expert = make_expert("crafter_planner")
    expert.reset(env, obs, info)
    total = 0.0
    while True:
        obs, reward, terminated, truncated, info = env.step(expert.act(obs, info))
        total += reward
        if terminated or truncated:
            break
    assert info["success"] and info["achievements"]["collect_wood"] == 1
    assert total >= 1.0  # crafter's own +1 for the first unlock
    assert set(info) >= {"instruction", "task", "success", "achievements"}


def test_info_reports_the_daylight_crafter_darkens_the_frame_by() -> None:
    """Protects: info['daylight'] is crafter's own (a plan's night rule reads it): full day
    frames are bright, it falls below 0.3 in the first night (crafter's 300-step day), and
    the frame is darker then."""
    env = make(task="wake_up", step_limit=400)
    obs, info = env.reset(seed=11)  # a world where standing still lives into the first night
    assert info["daylight"] == pytest.approx(float(env.unwrapped.world.daylight), abs=1e-3)
    assert info["daylight"] > 0.7
    bright, lows = float(obs["image"].mean()), []
    for _ in range(210):
        obs, _, terminated, _, info = env.step(0)
        assert not terminated
        lows.append(info["daylight"])
    assert min(lows) < 0.3 and info["daylight"] < 0.1
    assert float(obs["image"].mean()) < 0.9 * bright


def test_task_health_reward_is_the_task_plus_crafters_health_term() -> None:
    """Protects reward_mode="task_health": each step pays the task's 1.0 on its unlock plus
    crafter's own health term, which is crafter's reward less its +1 per first unlock of any
    achievement (collecting wood does not pay under make_wood_pickaxe); over an episode the
    health terms sum to (final - initial health) / 10."""
    env = make(task="make_wood_pickaxe", reward_mode="task_health", step_limit=300)
    crafter_env = make(task="make_wood_pickaxe", reward_mode="crafter", step_limit=300)
    rng = np.random.default_rng(0)
    _, info = env.reset(seed=5)
    crafter_env.reset(seed=5)
    start = info["inventory"]["health"]
    health_terms, before = [], dict(info["achievements"])
    while True:
        action = int(rng.integers(17))
        _, reward, terminated, truncated, info = env.step(action)
        _, crafter_reward, *_ = crafter_env.step(action)
        first_unlocks = sum(1 for name, count in info["achievements"].items() if count and not before[name])
        before = dict(info["achievements"])
        task = 1.0 if info["success"] else 0.0
        assert reward - task == pytest.approx(crafter_reward - first_unlocks)
        health_terms.append(reward - task)
        if terminated or truncated:
            break
    assert any(term != 0 for term in health_terms)
    assert sum(health_terms) == pytest.approx((info["inventory"]["health"] - start) / 10)


def test_death_terminates() -> None:
    env = make(task="place_stone", step_limit=10_000)
    env.reset(seed=0)
    env.unwrapped.player.health = 0
    _, _, terminated, truncated, info = env.step(0)
    assert terminated and not truncated and info["dead"] and not info["success"]


ONE_STEP = ["collect_wood", "collect_drink", "eat_cow", "collect_sapling"]


def test_same_world_different_instruction_needs_different_behaviour() -> None:
    """Replaying the expert's actions for task A under task B (same seeds) rarely solves B."""
    expert = make_expert("crafter_planner")
    # The expert's episode for each (task, seed), played once and reused on both sides.
    played = {
        (task, seed): run_episode(make(task=task), expert, seed, None, envs.CRAFTER_ID)
        for task in ONE_STEP
        for seed in range(4)
    }
    crossed = differ = total = 0
    for task_a in ONE_STEP:
        for task_b in ONE_STEP:
            if task_a == task_b:
                continue
            for seed in range(4):
                a, b = played[task_a, seed], played[task_b, seed]
                env_b = make(task=task_b)
                env_b.reset(seed=seed)
                solved = False
                for action in a.actions:
                    _, _, terminated, truncated, info = env_b.step(int(action))
                    solved = solved or info["success"]
                    if terminated or truncated:
                        break
                crossed += solved
                differ += not np.array_equal(a.actions[:5], b.actions[:5])
                total += 1
    assert crossed / total <= 0.25, f"{crossed}/{total} cross-task replays succeeded"
    assert differ / total >= 0.75


def test_open_ended_crafter_plays_the_whole_game() -> None:
    import gymnasium as gym

    import envs
    from envs.crafter_instruct import OPEN_ENDED_INSTRUCTION

    env = gym.make(envs.CRAFTER_OPEN_ID)
    env.action_space.seed(3)
    unlocked = False
    for episode in range(8):  # random players: some die before unlocking anything
        observation, info = env.reset(seed=episode)
        assert observation["instruction"] == OPEN_ENDED_INSTRUCTION and info["task"] == "open_ended"
        for _ in range(2000):
            observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
            unlocked = unlocked or reward >= 1.0  # crafter's reward: +1 per first unlock
            assert info["success"] is False
            if terminated or truncated:
                break
        assert terminated and info["dead"], "a random player dies well before 10000 steps"
        if unlocked:
            break
    assert unlocked
    with pytest.raises(ValueError, match="open_ended"):
        gym.make(envs.CRAFTER_OPEN_ID, task="collect_wood")
