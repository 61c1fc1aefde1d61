"""Instruction plans: what a plan file may say, and when the follower changes instruction."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest

import envs
from agent.plan import Plan, PlanError, PlanFollower
from envs.crafter_tasks import TASKS
from envs.experts import make_expert


def info(achievements: dict[str, int] | None = None, **inventory: int) -> dict:
    numbers = {"health": 9, "food": 9, "drink": 9, "energy": 9, **inventory}
    return {
        "achievements": {"collect_wood": 0, "place_table": 0, **(achievements or {})},
        "inventory": numbers,
    }


def test_inline_plan_reads_phrasings_and_task_names() -> None:
    plan = Plan.parse("collect wood; place_table ;  make a wood pickaxe ")
    assert [step.instruction for step in plan.steps] == [
        "collect wood",
        TASKS["place_table"].phrasings[0],
        "make a wood pickaxe",
    ]
    assert [step.achievement for step in plan.steps] == ["collect_wood", "place_table", "make_wood_pickaxe"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"step|no steps"),
        ("[]", r"has no steps"),
        ("steps: collect wood", r"steps must be a list"),
        ("- fly to the moon", r"step 1: 'fly to the moon' is neither a task name"),
        ("- {task: build_rocket}", r"step 1: unknown task 'build_rocket'"),
        ("- {task: collect_wood, budget: 0}", r"step 1: budget must be a positive integer"),
        (
            "steps: [collect wood]\nrules: [{when: 'thirst < 3', instruction: drink water, until: 'drink > 8'}]",
            r"rule 1: when: unknown number 'thirst'",
        ),
        (
            "steps: [collect wood]\nrules: [{when: 'drink < 3', instruction: drink water}]",
            r"rule 1: missing until",
        ),
        ("steps: [collect wood]\nrepeat: true", r"unknown key\(s\) \['repeat'\]"),
    ],
)
def test_bad_plan_files_name_the_file_and_entry(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(PlanError, match=message) as caught:
        Plan.load(path)
    assert str(path) in str(caught.value)


def test_json_plan_and_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps({"loop": True, "budget": 50, "steps": ["collect wood", {"task": "place_table"}]})
    )
    plan = Plan.load(path)
    assert plan.loop and [step.budget for step in plan.steps] == [50, 50]
    with pytest.raises(PlanError, match="does not exist"):
        Plan.from_arg(str(tmp_path / "nope.yaml"))


def test_too_long_instructions_are_refused_with_their_length() -> None:
    plan = Plan.parse("collect wood; place a table")
    with pytest.raises(PlanError, match=r"'place a table' has 3 tokens, more than .* max_tokens=2"):
        plan.check_lengths(lambda text: len(text.split()), 2)


def test_follower_advances_on_the_unlock_then_on_the_budget_and_holds_the_last() -> None:
    plan = Plan.from_dict({"budget": 3, "steps": ["collect wood", "place a table"]})
    follower = PlanFollower(plan)
    assert follower.start(info()) == "collect wood"
    assert follower.observe(info()) == "collect wood"  # nothing unlocked yet
    # The step whose info shows the unlock is the last under the first instruction.
    assert follower.observe(info({"collect_wood": 1})) == "place a table"
    assert follower.completed == 1
    # Budget 3: three steps under "place a table" without the unlock end it; the plan holds it.
    for _ in range(2):
        assert follower.observe(info({"collect_wood": 1})) == "place a table"
    assert not follower.finished
    assert follower.observe(info({"collect_wood": 1})) == "place a table"
    assert follower.finished and follower.completed == 1
    assert [event[2] for event in follower.events] == ["start", "collect_wood unlocked", "budget (3 steps)"]


def test_a_looping_plan_starts_again_and_counts_repeat_unlocks() -> None:
    follower = PlanFollower(Plan.parse("collect wood; place a table", loop=True))
    follower.start(info())
    assert follower.observe(info({"collect_wood": 1})) == "place a table"
    assert follower.observe(info({"collect_wood": 1, "place_table": 1})) == "collect wood"
    # A second wood (count 1 -> 2) completes the step again, though crafter rewards only the first.
    assert follower.observe(info({"collect_wood": 2, "place_table": 1})) == "place a table"
    assert follower.completed == 3 and not follower.finished


def test_a_rule_interrupts_and_the_plan_resumes_its_step() -> None:
    plan = Plan.from_dict(
        {
            "budget": 10,
            "steps": ["collect wood", "place a table"],
            "rules": [
                {"when": "drink < 3", "instruction": "drink water", "until": "drink >= 6", "budget": 4}
            ],
        }
    )
    follower = PlanFollower(plan)
    follower.start(info())
    follower.observe(info())  # one step of the plan's step 1 spent
    assert follower.observe(info(drink=2)) == "drink water"
    assert follower.source == "rule: drink < 3"
    assert follower.observe(info(drink=4)) == "drink water"  # until not reached
    assert follower.observe(info(drink=6)) == "collect wood"  # until holds: back to the plan
    # Step 1's budget counted only its own steps (2 so far): 8 more end it.
    for _ in range(7):
        assert follower.observe(info()) == "collect wood"
    assert follower.observe(info()) == "place a table"
    # A rule that never reaches its until gives up after its budget, then rests as long.
    assert follower.observe(info(drink=1)) == "drink water"
    for _ in range(3):
        assert follower.observe(info(drink=1)) == "drink water"
    assert follower.observe(info(drink=1)) == "place a table"
    assert follower.events[-1][2] == "rule budget (4 steps)"
    for _ in range(3):
        assert follower.observe(info(drink=1)) == "place a table"
    assert follower.observe(info(drink=1)) == "drink water"  # rested: it fires again


def test_on_a_real_world_the_plan_moves_on_the_step_wood_is_collected() -> None:
    """The expert chops wood in Crafter; the follower's instruction changes on exactly the step
    whose info first shows collect_wood unlocked, so the next action is taken under the second."""
    env = gym.make(envs.CRAFTER_ID, task="collect_wood")
    expert = make_expert("crafter_planner")
    observation, reset_info = env.reset(seed=3)
    expert.reset(env, observation, reset_info)
    follower = PlanFollower(Plan.parse("collect wood; place a table"))
    instructions = [follower.start(reset_info)]
    unlocked_at, last_info = None, reset_info
    for step in range(1, 101):
        observation, _, terminated, truncated, step_info = env.step(expert.act(observation, last_info))
        last_info = step_info
        instructions.append(follower.observe(step_info))
        if unlocked_at is None and step_info["achievements"]["collect_wood"] > 0:
            unlocked_at = step
        if terminated or truncated:
            break
    assert unlocked_at is not None
    assert instructions[:unlocked_at] == ["collect wood"] * unlocked_at
    assert instructions[unlocked_at] == "place a table"
