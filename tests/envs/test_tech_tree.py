"""Every crafter achievement is a Crafter-Instruct task, and the planner solves each from a fresh
world: success conditions, the routes it plans with, and bad input."""

from __future__ import annotations

import crafter
import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.crafter_tasks import TASKS
from envs.data.collect import run_episode
from envs.experts import make_expert
from envs.experts.crafter_routes import BLOCKED, FREE, MINABLE, route

ORIGINAL = (
    "collect_wood",
    "collect_sapling",
    "collect_drink",
    "eat_cow",
    "place_table",
    "make_wood_pickaxe",
    "make_wood_sword",
    "place_plant",
    "collect_stone",
    "place_stone",
)
QUICK = (
    "wake_up",
    "defeat_zombie",
    "collect_coal",
    "place_furnace",
    "make_stone_pickaxe",
    "make_stone_sword",
    "defeat_skeleton",
)
LONG = ("collect_iron", "make_iron_pickaxe", "make_iron_sword", "collect_diamond", "eat_plant")
SEEDS = (3, 4, 6, 9, 1)  # the planner must solve each task on at least one of these worlds


def test_every_achievement_is_a_task_with_three_phrasings() -> None:
    assert set(QUICK + LONG + ORIGINAL) == set(TASKS)
    assert {task.achievement for task in TASKS.values()} == set(crafter.constants.achievements)
    for name, task in TASKS.items():
        assert task.achievement == name and len(set(task.phrasings)) >= 3 and task.step_limit > 0
    phrasings = [p for task in TASKS.values() for p in task.phrasings]
    assert len(phrasings) == len(set(phrasings)), "a phrasing names one task only"


def test_the_original_tasks_keep_their_phrasings_and_limits() -> None:
    # Trained checkpoints and published results depend on these.
    assert list(TASKS)[:10] == list(ORIGINAL)
    assert [TASKS[name].step_limit for name in ORIGINAL] == [100, 100, 100, 150, 150, 200, 200, 150, 250, 250]
    assert TASKS["collect_wood"].phrasings[0] == "collect wood"


def solved(task: str) -> tuple[int, list[int]]:
    """The first seed of SEEDS the planner solves ``task`` on, and its actions."""
    env = gym.make(envs.CRAFTER_ID, task=task)
    for seed in SEEDS:
        episode = run_episode(env, make_expert("crafter_planner"), seed, None, envs.CRAFTER_ID)
        if episode.success:
            assert episode.length <= TASKS[task].step_limit
            return seed, [int(a) for a in episode.actions]
    raise AssertionError(f"the planner solved {task} on none of the seeds {SEEDS}")


def check_unlocks_on_the_last_action(task: str) -> None:
    """Replaying the planner's actions in a fresh env: no success before the last action, success
    (reward 1, terminated) on it; the same actions one short of that never succeed."""
    seed, actions = solved(task)
    env = gym.make(envs.CRAFTER_ID, task=task, step_limit=len(actions) + 5)
    env.reset(seed=seed)
    for action in actions[:-1]:
        _, reward, terminated, _, info = env.step(action)
        assert not info["success"] and reward == 0.0 and not terminated
    assert info["achievements"][task] == 0
    _, reward, terminated, truncated, info = env.step(actions[-1])
    assert info["success"] and reward == 1.0 and terminated and not truncated
    assert info["achievements"][task] == 1
    # Without the last action the achievement never comes, however long the player waits. A
    # sleeper wakes whatever it presses: for wake_up, the counter-example never lies down.
    if task == "wake_up":
        sleep = env.unwrapped.action_names.index("sleep")
        without = [0 if action == sleep else action for action in actions]
    else:
        without = actions[:-1]
    env.reset(seed=seed)
    for action in [*without, 0, 0, 0]:
        _, _, _, _, info = env.step(action)
        assert not info["success"]


@pytest.mark.parametrize("task", QUICK)
def test_new_task_succeeds_exactly_when_its_achievement_unlocks(task: str) -> None:
    check_unlocks_on_the_last_action(task)


@pytest.mark.slow
@pytest.mark.parametrize("task", LONG)
def test_long_task_succeeds_exactly_when_its_achievement_unlocks(task: str) -> None:
    check_unlocks_on_the_last_action(task)


@pytest.mark.slow
@pytest.mark.parametrize("task", ORIGINAL)
def test_planner_solves_the_original_tasks(task: str) -> None:
    solved(task)


def test_success_needs_the_instructed_achievement_not_any() -> None:
    """The wake_up actions unlock wake_up, never another task's success."""
    seed, actions = solved("wake_up")
    env = gym.make(envs.CRAFTER_ID, task="collect_coal", step_limit=len(actions))
    env.reset(seed=seed)
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        assert not info["success"] and reward == 0.0
    assert info["achievements"]["wake_up"] == 1 and truncated and not terminated


def test_an_impossible_world_ends_as_a_failed_episode() -> None:
    """No diamond anywhere: the planner explores until the step limit truncates the episode."""
    env = gym.make(envs.CRAFTER_ID, task="collect_diamond", step_limit=150)
    obs, info = env.reset(seed=4)
    world = env.unwrapped.world
    world._mat_map[world._mat_map == world._mat_ids["diamond"]] = world._mat_ids["stone"]
    expert = make_expert("crafter_planner")
    expert.reset(env, obs, info)
    for _ in range(150):
        obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
        if terminated or truncated:
            break
    assert truncated and not info["success"]


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "100"])
def test_step_limit_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match=r"step_limit must be a positive integer, got"):
        gym.make(envs.CRAFTER_ID, step_limit=bad)
    assert gym.make(envs.CRAFTER_ID, step_limit=np.int64(5)).unwrapped.step_limit == 5


def test_unknown_task_lists_the_valid_names() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown Crafter-Instruct task\(s\) \['mine_gold'\]; known tasks: .*collect_diamond",
    ):
        gym.make(envs.CRAFTER_ID, task=["collect_coal", "mine_gold"])
    env = gym.make(envs.CRAFTER_ID)
    with pytest.raises(
        ValueError, match=r"unknown Crafter-Instruct task 'mine_gold'; known tasks: .*wake_up"
    ):
        env.reset(seed=0, options={"task": "mine_gold"})


# -- routes ---------------------------------------------------------------------------------
def grid(rows: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cells and goal from a picture: '.' free, '#' minable, 'X' blocked, 'G' blocked goal,
    'g' free goal; rows are y, columns x."""
    kinds = {".": FREE, "#": MINABLE, "X": BLOCKED, "G": BLOCKED, "g": FREE}
    cells = np.array([[kinds[c] for c in row] for row in rows]).T
    goal = np.array([[c in "Gg" for c in row] for row in rows]).T
    return cells, goal


def test_route_digs_through_rock_when_walking_around_costs_more() -> None:
    cells, goal = grid(["..#..G", "XXXXXX"])
    found = route(cells, goal, (0, 0), (1, 0))
    assert found is not None and found.direction == (1, 0) and not found.arrived
    assert found.cost == 1 + 3 + 1 + 1  # walk, dig-and-step, walk, walk; then face G
    cells, goal = grid(["..X..G", "XXXXXX"])
    assert route(cells, goal, (0, 0), (1, 0)) is None  # nothing to dig, no way round


def test_route_prefers_a_walk_round_to_a_long_dig() -> None:
    cells, goal = grid([".##.G", "....X"])
    found = route(cells, goal, (0, 0), (1, 0))
    assert found is not None and found.direction == (0, 1)  # 5 steps round beat 2 digs (7)


def test_a_free_goal_is_faced_only_by_arriving_toward_it() -> None:
    # Standing next to a free goal while facing away: the route must come back round to face it.
    cells, goal = grid([".....", ".....", "..g..", ".....", "....."])
    found = route(cells, goal, (2, 1), (1, 0))
    assert found is not None and not found.arrived and found.cost > 0  # walk round to face it
    found = route(cells, goal, (2, 1), (0, 1))  # already facing it
    assert found is not None and found.arrived and found.direction == (0, 1) and found.cost == 0
    # A blocked goal next to the player: just turn toward it.
    cells, goal = grid(["...", ".G.", "..."])
    found = route(cells, goal, (1, 0), (1, 0))
    assert found is not None and found.arrived and found.direction == (0, 1)


def test_route_extra_cost_steers_round_danger() -> None:
    cells, goal = grid(["....G", "....."])
    danger = np.zeros(cells.shape, np.int64)
    danger[1:4, 0] = 10
    found = route(cells, goal, (0, 0), (1, 0), extra_cost=danger)
    assert found is not None and found.direction == (0, 1)


def test_lava_is_never_free_or_minable() -> None:
    env = gym.make(envs.CRAFTER_ID, task="collect_diamond")
    obs, info = env.reset(seed=0)
    expert = make_expert("crafter_planner")
    expert.reset(env, obs, info)
    world = env.unwrapped.world
    world._mat_map[:, :] = world._mat_ids["lava"]
    player = env.unwrapped.player
    for tool in ("wood_pickaxe", "stone_pickaxe", "iron_pickaxe"):
        player.inventory[tool] = 1
    assert (expert._cells(tunnel=True) == BLOCKED).all()


def test_told_to_sleep_mid_game_with_a_pickaxe_the_planner_seals_itself_in_first() -> None:
    """Protects the wake_up plan with a pickaxe in hand (a plan's night rule mid-game): the
    planner digs its shelter and falls asleep sealed in, where a zombie cannot reach it; from
    a fresh world (the task's own episodes, no pickaxe) it falls asleep where it stands."""

    def fall_asleep(pickaxe: bool) -> tuple[int, bool]:
        env = gym.make(envs.CRAFTER_ID, task="wake_up", step_limit=300)
        obs, info = env.reset(seed=1)
        player = env.unwrapped.player
        player.inventory["energy"] = 5
        if pickaxe:
            player.inventory["wood_pickaxe"], player.inventory["stone"] = 1, 2
        expert = make_expert("crafter_planner")
        expert.reset(env, obs, info)
        steps = 0
        while not player.sleeping:
            obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
            steps += 1
            assert not (terminated or truncated) and steps < 150
        return steps, expert._sealed_here()

    steps, sealed = fall_asleep(pickaxe=True)
    assert sealed and steps > 5
    assert fall_asleep(pickaxe=False) == (1, False)


def test_dawn_says_whether_the_light_is_rising() -> None:
    """crafter's day is 300 steps: the light falls from noon (step 60) to midnight (210), then
    rises; ``dawn`` follows it (the two turning points excepted, where it does not move)."""
    env = gym.make(envs.CRAFTER_ID, task="collect_wood", step_limit=700)
    env.reset(seed=0)
    base = env.unwrapped
    light = base.world.daylight
    seen = set()
    for step in range(1, 650):
        env.step(0)
        now = base.world.daylight
        if step % 150 != 60:
            assert base.dawn == (now > light), step
            seen.add(base.dawn)
        light = now
    assert seen == {True, False}


def test_with_the_furnace_away_from_the_table_the_planner_builds_one_beside_it() -> None:
    """Protects iron tools when no cell reaches both stations (the furnace stands apart, or an
    arrow broke one) and the wood left is too little for a new table: the planner places a
    second furnace beside the table and crafts, where it used to wander until the step limit."""
    env = gym.make(envs.CRAFTER_ID, task="make_iron_pickaxe", step_limit=100)
    obs, info = env.reset(seed=1)
    base = env.unwrapped
    world, player = base.world, base.player
    for item, count in {
        "wood": 1,
        "coal": 1,
        "iron": 1,
        "stone": 5,
        "wood_pickaxe": 1,
        "stone_pickaxe": 1,
    }.items():
        player.inventory[item] = count
    x, y = (int(v) for v in player.pos)
    for dx in range(-3, 14):
        for dy in range(-3, 4):
            if world[x + dx, y + dy][1] is None or (dx, dy) == (0, 0):
                world[x + dx, y + dy] = "grass"
    world[x - 2, y] = "table"
    world[x + 12, y] = "furnace"
    expert = make_expert("crafter_planner")
    expert.reset(env, obs, info)
    for _ in range(60):
        obs, _, terminated, _, info = env.step(expert.act(obs, info))
        if terminated:
            break
    assert info["success"]
    assert (world._mat_map == world._mat_ids["furnace"]).sum() == 2


def night_episode(expert_name: str) -> tuple[bool, bool, list[tuple[bool, bool, tuple[int, int], int, int]]]:
    """make_iron_pickaxe on seed 48, a world whose first night the planner spends by a meadow:
    success, death, and per step (night, sealed in, position, drink, food)."""
    env = gym.make(envs.CRAFTER_ID, task="make_iron_pickaxe")
    obs, info = env.reset(seed=48)
    player = env.unwrapped.player
    expert = make_expert(expert_name, seed=48)
    expert.reset(env, obs, info)
    trace = []
    while True:
        inventory = player.inventory
        state = (expert._night(), expert._sealed_here(), tuple(int(v) for v in player.pos))
        trace.append((*state, inventory["drink"], inventory["food"]))
        obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
        if terminated or truncated:
            return bool(info["success"]), player.health <= 0, trace


@pytest.mark.slow
def test_the_night_planner_sits_the_night_out_where_the_day_planner_dies() -> None:
    """The day planner leaves its shelter once rested, in the dark, and zombies kill it; the
    night planner stays sealed in from the first night step it is sealed until the light has
    risen past DAWN (water and food stay above NIGHT_LOW here), then goes on and crafts."""
    success, dead, _ = night_episode("crafter_planner")
    assert dead and not success
    success, dead, trace = night_episode("crafter_night_planner")
    assert success and not dead
    first = next(i for i, (night, sealed, *_) in enumerate(trace) if night and sealed)
    end = next(i for i in range(first, len(trace)) if not trace[i][0])
    assert end - first > 30
    assert all(sealed and pos == trace[first][2] for _, sealed, pos, *_ in trace[first:end])
    assert min(min(drink, food) for *_, drink, food in trace[first:end]) > 1


def stone_when_planting(expert_name: str, seed: int) -> int:
    """The stone the planner holds on the step its sapling goes into the ground (eat_plant)."""
    env = gym.make(envs.CRAFTER_ID, task="eat_plant")
    obs, info = env.reset(seed=seed)
    base = env.unwrapped
    expert = make_expert(expert_name, seed=seed)
    expert.reset(env, obs, info)
    for _ in range(400):
        stone = base.player.inventory["stone"]
        obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
        if any(type(obj).__name__ == "Plant" for obj in base.world.objects):
            return stone
        assert not (terminated or truncated)
    raise AssertionError("no sapling planted in 400 steps")


def test_the_night_planner_gathers_the_plant_wall_before_planting() -> None:
    """The day planner plants first and fetches the wall's stones one at a time, the sapling
    open meanwhile; the night planner holds all four when it plants."""
    assert stone_when_planting("crafter_night_planner", 3) >= 4
    assert stone_when_planting("crafter_planner", 3) < 4
