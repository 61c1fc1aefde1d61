"""``eval --expert``: the expert acts in the agent's place on the same episodes (seeds, tasks,
instruction modes, plans), so its success, its correct - swapped gap and a plan's score with a
perfect follower are measured the way an agent's are. Real crafter, real planner."""

from __future__ import annotations

import subprocess

import pytest
from helpers import SCRIPT

import envs
from agent.errors import AgentSettingError
from agent.evaluate import evaluate, sensitivity
from agent.plan import Plan
from envs.crafter_tasks import TASKS, task_of_phrasing
from envs.data.collect import run_episode as collect_episode
from envs.experts import make_expert
from envs.workers import make_env

BABYAI = "instructcraft/BabyAI-GoToLocal-v0"
SHORT = ["collect_wood", "place_table", "collect_drink", "make_wood_pickaxe"]


def test_the_expert_in_eval_plays_the_episodes_collect_records() -> None:
    result = evaluate(envs.CRAFTER_ID, 4, expert="crafter_planner", tasks=SHORT, seed=100_000)
    env = make_env(envs.CRAFTER_ID, SHORT)
    for i, row in enumerate(result["per_episode"]):
        seed = 100_000 + i
        episode = collect_episode(
            env, make_expert("crafter_planner", seed=seed), seed, SHORT[i], envs.CRAFTER_ID
        )
        assert (row["task"], row["seed"]) == (SHORT[i], seed)
        assert row["success"] == episode.success is True
        assert row["length"] == len(episode.actions)
        assert row["stuck_steps"] == 0
    assert result["success_rate"] == 1.0


def test_told_a_swapped_instruction_the_expert_pursues_that_task() -> None:
    tasks = ["eat_cow", "collect_wood", "collect_sapling"]
    result = evaluate(envs.CRAFTER_ID, 3, expert="crafter_planner", tasks=tasks, mode="swapped")
    for row in result["per_episode"]:
        told = task_of_phrasing(row["instruction"])
        assert told in tasks and told != row["task"]
        assert row["achievement_counts"][told] >= 1  # it did what it was told, not the env's task
        assert row["success"] == (row["achievement_counts"][row["task"]] >= 1)


def test_the_expert_gap_on_the_tech_tree_is_below_one() -> None:
    """A table needs wood: told to place one, the expert also collects wood, so collect_wood's
    swapped success is 1 and the gap 0 there, while the swapped make_wood_pickaxe fails."""
    result = sensitivity(
        envs.CRAFTER_ID,
        2,
        expert="crafter_planner",
        tasks=["collect_wood", "make_wood_pickaxe"],
        seed=100_000,
    )
    assert set(result["runs"]) == {"correct", "swapped"}
    table = result["tasks"]
    assert table["collect_wood"] == {"correct": 1.0, "swapped": 1.0, "correct_minus_swapped": 0.0}
    assert table["make_wood_pickaxe"]["swapped"] == 0.0
    assert result["mean_correct_minus_swapped"] == pytest.approx(0.5)


def test_the_expert_follows_a_plan_step_by_step() -> None:
    plan = Plan.from_arg("collect wood; place a table; make a wood pickaxe")
    result = evaluate(envs.CRAFTER_ID, 1, expert="crafter_planner", tasks=["make_wood_pickaxe"], plan=plan)
    row = result["per_episode"][0]
    assert row["success"]
    assert row["plan"]["completed"] == 3
    assert row["plan"]["last_instruction"] == TASKS["make_wood_pickaxe"].phrasings[0]


@pytest.mark.parametrize(
    ("env_id", "expert", "kwargs", "message"),
    [
        (envs.CRAFTER_ID, "crafter_planner", {"mode": "blank"}, "no behaviour without an instruction"),
        (envs.CRAFTER_ID, "crafter_planner", {"cfg_scale": 1.0}, "drop them"),
        (envs.CRAFTER_ID, "crafter_planner", {"deterministic": True}, "drop them"),
        (BABYAI, "babyai_bot", {"mode": "swapped"}, "another task than its env's"),
        (envs.CRAFTER_ID, "crafter_planner_x", {}, "unknown expert 'crafter_planner_x'"),
        (BABYAI, "crafter_planner", {}, "cannot act in this env"),
    ],
)
def test_what_an_expert_cannot_be_asked_is_refused_before_any_episode(
    env_id: str, expert: str, kwargs: dict, message: str
) -> None:
    with pytest.raises(AgentSettingError, match=message):
        evaluate(env_id, 2, expert=expert, progress=lambda row: pytest.fail("an episode ran"), **kwargs)


def test_eval_cli_expert_sensitivity_and_its_refusals(tmp_path) -> None:
    base = [SCRIPT, "eval", "--env", envs.CRAFTER_ID, "--episodes", "2", "--workers", "2"]
    run = subprocess.run(
        [*base, "--expert", "crafter_planner", "--tasks", "collect_wood", "place_table", "--sensitivity"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines() if line.strip()}
    assert lines["collect_wood"] == ["1.000", "1.000", "-", "0.000"]  # placing a table collects wood
    assert lines["place_table"] == ["1.000", "0.000", "-", "1.000"]
    both = subprocess.run(
        [*base, "--expert", "crafter_planner", "--checkpoint", str(tmp_path)], capture_output=True, text=True
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    phrasings = tmp_path / "p.json"
    phrasings.write_text('{"collect_wood": ["fell a tree"]}')
    wording = subprocess.run(
        [*base, "--expert", "crafter_planner", "--phrasings", str(phrasings)], capture_output=True, text=True
    )
    assert wording.returncode == 2 and "an expert reads no text" in wording.stderr


def test_an_expert_episode_does_not_depend_on_the_episodes_its_worker_ran_before() -> None:
    """Protects: the per-episode reseed (``ExpertActor.seed_episode``). Worlds 36 and 37 hold no
    diamond, so the planner told to mine one ends up exploring at random (until it dies); episode 37
    run after 36 in the same worker must be the episode 37 run alone."""
    after = evaluate(envs.CRAFTER_ID, 2, expert="crafter_planner", tasks=["collect_diamond"], seed=36)
    alone = evaluate(envs.CRAFTER_ID, 1, expert="crafter_planner", tasks=["collect_diamond"], seed=37)
    first, second = after["per_episode"]
    (row,) = alone["per_episode"]
    assert not first["success"] and not row["success"]
    assert {k: second[k] for k in ("seed", "length", "return", "achievement_counts")} == {
        k: row[k] for k in ("seed", "length", "return", "achievement_counts")
    }
