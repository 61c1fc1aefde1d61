"""DAgger rollouts that follow a plan: one open-ended game per rollout, the learner told the
plan's instructions in turn, the expert labelling the task of the instruction in effect, and
the game cut into one episode per stretch of one instruction.

Real parts: the open-ended Crafter game, the crafter planner and a tiny policy behind the real
``Agent`` and ``PlanFollower``.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from helpers import make_tiny_config, run_cli, tiny_run_config

import envs
from agent import Agent
from agent.errors import PlanError
from agent.plan import Plan
from envs.data.collect import run_episode
from envs.data.store import Dataset, DatasetWriter
from envs.errors import EnvSettingError, TaskError
from envs.experts import make_expert
from policies import InstructionPolicy
from train.config import ConfigError, DaggerConfig, load_run_config
from train.dagger import run_dagger
from train.dagger_rollout import RolloutJob, run_plan_dagger_episode
from train.dagger_settings import PLAN_FILE, load_state, resume_command

WOOD_THEN_TABLE = Plan.parse("collect wood; place a table")


def tiny_agent() -> Agent:
    config = make_tiny_config().replace(**{"vision.image_size": [64, 64], "vision.channels": [8, 16]})
    torch.manual_seed(0)
    return Agent(InstructionPolicy(config), seed=0)


def plan_game(beta: float, plan: Plan = WOOD_THEN_TABLE, step_limit: int = 80, seed: int = 3):
    env = gym.make(envs.CRAFTER_OPEN_ID, step_limit=step_limit)
    episodes = run_plan_dagger_episode(
        tiny_agent(),
        env,
        make_expert("crafter_planner"),
        envs.CRAFTER_OPEN_ID,
        RolloutJob(seed, None, 1, beta),
        plan,
    )
    return env, episodes


def test_the_game_is_cut_exactly_where_the_instruction_changes() -> None:
    """With the expert acting (beta 1) the wood unlocks, the table instruction takes over from
    the next step and holds (the plan does not loop): one episode per instruction given, each cut
    (truncated) on the step its achievement unlocked, tiling the game to its step limit."""
    _, episodes = plan_game(beta=1.0)
    wood, table, *again = episodes
    assert (wood.instruction, wood.task) == ("collect wood", "collect_wood")
    assert {(e.instruction, e.task) for e in [table, *again]} == {("place a table", "place_table")}
    assert again, "the held last instruction starts a new episode each time it is done"
    for episode in episodes[:-1]:  # each ends on its only reward: the unlock is its last step
        assert episode.success and episode.rewards.tolist() == [0.0] * (episode.length - 1) + [1.0]
        assert episode.truncated.tolist() == [False] * (episode.length - 1) + [True]
    assert not any(episode.terminated.any() for episode in episodes)
    assert episodes[-1].truncated[-1] and sum(e.length for e in episodes) == 80  # the step limit
    for number, (episode, after) in enumerate(itertools.pairwise(episodes)):
        assert after.extra["game_step"] == episode.extra["game_step"] + episode.length, number
        assert np.array_equal(after.images[0], episode.images[-1])  # the next starts on the same frame
    for number, episode in enumerate(episodes):
        assert episode.extra["plan_piece"] == number and episode.extra["dagger_round"] == 1
        assert episode.extra["executed_actions"] == episode.actions.tolist()  # beta 1: the expert ran
        assert episode.extra["learner_steps"] == 0
        assert episode.seed == 3 and episode.expert == "crafter_planner"
    assert wood.extra["game_step"] == 0


def test_each_instruction_s_steps_are_labelled_for_its_own_task() -> None:
    """The labels of each stretch are what the planner told that stretch's task says in its
    states: replaying the game, a planner following the same task gives the same actions."""
    env, episodes = plan_game(beta=1.0)
    replay = make_expert("crafter_planner")
    observation, info = env.reset(seed=3)
    replay.reset(env, observation, info)
    for episode in episodes:
        replay.follow(episode.task)
        for label in episode.actions.tolist():
            assert replay.act(observation, info) == label
            observation, _, terminated, truncated, info = env.step(label)
            if terminated or truncated:
                break


def test_the_learner_acts_where_beta_is_zero_and_labels_stay_the_expert_s() -> None:
    """Beta 0: every executed action is the learner's; the recorded labels are the expert's
    (they differ somewhere from a random tiny policy), and learner_steps counts the differences."""
    _, episodes = plan_game(beta=0.0, step_limit=40)
    assert sum(episode.length for episode in episodes) == 40
    differ = sum(
        int(np.sum(np.asarray(episode.extra["executed_actions"]) != episode.actions)) for episode in episodes
    )
    assert differ > 0
    assert differ == sum(episode.extra["learner_steps"] for episode in episodes)


def test_a_rule_gets_its_own_episode_with_the_rule_s_task() -> None:
    """A rule in effect from the first step (drink < 10 holds at the start) is a stretch of its
    own, labelled for the rule's task; the plan's step follows when the rule ends."""
    plan = Plan.from_dict(
        {
            "steps": ["collect wood"],
            "rules": [
                {"when": "drink < 10", "instruction": "drink water", "until": "health < 0", "budget": 5}
            ],
        }
    )
    _, episodes = plan_game(beta=1.0, plan=plan, step_limit=30)
    assert [(e.task, e.instruction) for e in episodes[:2]] == [
        ("collect_drink", "drink water"),
        ("collect_wood", "collect wood"),
    ]
    assert episodes[0].length == 5 and episodes[0].truncated[-1]


def test_the_planner_follows_a_task_it_is_told_instead_of_the_env_s() -> None:
    env = gym.make(envs.CRAFTER_OPEN_ID)
    observation, info = env.reset(seed=0)
    expert = make_expert("crafter_planner")
    expert.reset(env, observation, info)
    with pytest.raises(TaskError, match="no plan for task 'open_ended'"):
        expert.act(observation, info)
    expert.follow("collect_wood")
    assert 0 <= expert.act(observation, info) < env.action_space.n
    with pytest.raises(TaskError, match="unknown Crafter-Instruct task 'chop'"):
        expert.follow("chop")
    expert.reset(env, observation, info)  # a new episode labels the env's task again
    with pytest.raises(TaskError, match="open_ended"):
        expert.act(observation, info)


def test_an_expert_that_cannot_be_told_a_task_says_which_can() -> None:
    with pytest.raises(EnvSettingError, match="crafter_planner, crafter_night_planner, crafter_view_planner"):
        make_expert("babyai_bot").follow("collect_wood")


@pytest.mark.parametrize("task", ["make_stone_pickaxe", "place_furnace"])
def test_told_again_to_make_what_it_has_the_planner_makes_another(task: str) -> None:
    """Mid-plan the agent may already hold the tool (or have a furnace standing far away): the
    planner makes another, which is what unlocks the achievement a second time, instead of
    finding nothing left to do."""
    env = gym.make(envs.CRAFTER_OPEN_ID)
    observation, info = env.reset(seed=1)
    expert = make_expert("crafter_planner")
    expert.reset(env, observation, info)
    expert.follow(task)
    for _ in range(600):
        observation, _, terminated, truncated, info = env.step(expert.act(observation, info))
        assert not (terminated or truncated)
        if info["achievements"][task] == 2:
            break
    assert info["achievements"][task] == 2


# -- the run: flags, checks, state ----------------------------------------------------------
@pytest.fixture(scope="module")
def crafter_demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("crafter") / "demos"
    env = gym.make(envs.CRAFTER_ID)
    with DatasetWriter(
        path, env_id=envs.CRAFTER_ID, image_shape=(64, 64, 3), action_space=env.action_space
    ) as writer:
        for seed in range(2):
            writer.add(
                run_episode(env, make_expert("crafter_planner"), seed, "collect_wood", envs.CRAFTER_ID)
            )
    return str(path)


def tiny_run(**dagger: object):
    run = load_run_config(
        None,
        [
            *("train.steps=2", "train.batch_size=2", "train.chunk_length=8", "train.val_fraction=0.0"),
            *("train.device=cpu", "train.amp=false", "train.log_every=100", "train.checkpoint_every=100"),
        ],
        base=tiny_run_config(instruction_dropout=0.0),
    )
    settings = {
        "rounds": 1,
        "episodes": 1,
        "steps": 2,
        "beta": 0.0,
        "eval_episodes": 0,
        "workers": 1,
        **dagger,
    }
    return dataclasses.replace(run, dagger=DaggerConfig(**settings))  # type: ignore[arg-type]


def test_a_plan_run_aggregates_each_game_s_instructions_and_records_its_plan(
    crafter_demos: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    plan = Plan.parse("collect wood; place a table")
    state = run_dagger(
        tiny_run(),
        crafter_demos,
        str(out),
        envs.CRAFTER_OPEN_ID,
        "crafter_planner",
        plan=plan,
        progress=False,
    )
    aggregate = Dataset(out / "data")
    rollouts = [entry for entry in aggregate.episodes if "dagger_round" in entry.get("extra", {})]
    assert rollouts and {entry["seed"] for entry in rollouts} == {state["first_seed"]}
    assert rollouts[0]["task"] == "collect_wood"
    starts = [entry["extra"]["game_step"] for entry in rollouts]
    assert starts == [sum(entry["length"] for entry in rollouts[:i]) for i in range(len(rollouts))]
    # The plan is part of the run: in its state, as a file --plan reads back, in the resume command.
    assert state["plan"] == plan.to_file()
    assert Plan.load(out / PLAN_FILE) == Plan.from_dict(plan.to_file(), source=str(out / PLAN_FILE))
    assert f"--plan {out / PLAN_FILE}" in resume_command(out, load_state(out))
    with pytest.raises(ConfigError, match="--plan"):
        run_dagger(
            tiny_run(),
            crafter_demos,
            str(out),
            envs.CRAFTER_OPEN_ID,
            "crafter_planner",
            plan=Plan.parse("collect wood"),
            resume=True,
            progress=False,
        )


@pytest.mark.parametrize(
    ("env_id", "expert", "tasks", "plan", "error", "message"),
    [
        (envs.CRAFTER_ID, "crafter_planner", None, WOOD_THEN_TABLE, ConfigError, "Crafter-OpenEnded-v0"),
        (
            envs.CRAFTER_OPEN_ID,
            "crafter_planner",
            ["collect_wood"],
            WOOD_THEN_TABLE,
            ConfigError,
            "drop --tasks",
        ),
        (envs.CRAFTER_OPEN_ID, "babyai_bot", None, WOOD_THEN_TABLE, EnvSettingError, "cannot be told"),
        (
            envs.CRAFTER_OPEN_ID,
            "crafter_planner",
            None,
            Plan.from_dict({"steps": [{"instruction": "wood " * 80, "task": "collect_wood"}]}),
            PlanError,
            "more than the text encoder's max_tokens",
        ),
    ],
)
def test_a_plan_run_that_cannot_work_stops_before_anything_is_written(
    crafter_demos: str, tmp_path: Path, env_id: str, expert: str, tasks, plan: Plan, error, message: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(error, match=message):
        run_dagger(
            tiny_run(), crafter_demos, str(out), env_id, expert, tasks=tasks, plan=plan, progress=False
        )
    assert not out.exists() or not any(out.iterdir())


def test_a_plan_written_as_a_file_reads_back_equal(tmp_path: Path) -> None:
    """What a run writes to OUT/plan.yaml (``Plan.to_file``) is a plan file: steps, rules with
    their tasks, budgets and loop come back the same."""
    plan = Plan.from_dict(
        {
            "loop": True,
            "budget": 40,
            "steps": ["collect wood", {"task": "place_table", "budget": 7}],
            "rules": [{"when": "drink < 4", "instruction": "drink water", "until": "drink >= 8"}],
        }
    )
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan.to_file(), sort_keys=False))
    again = Plan.load(path)
    assert again.to_file() == plan.to_file() and again.rules[0].task == "collect_drink"


@pytest.mark.parametrize(
    ("plan", "env_id", "message"),
    [
        ("collect wood; chop a tree", envs.CRAFTER_OPEN_ID, "'chop a tree' is neither a task name"),
        ("collect wood", envs.CRAFTER_ID, "use --env instructcraft/Crafter-OpenEnded-v0"),
    ],
)
def test_dagger_plan_flag_refuses_before_anything_runs(
    crafter_demos: str, tmp_path: Path, plan: str, env_id: str, message: str
) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "dagger", "--data", crafter_demos, "--env", env_id, "--out", str(out), "--plan", plan, check=False
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_resumed_run_without_plan_flag_follows_the_plan_it_started_with(tmp_path: Path) -> None:
    """``dagger --resume`` without ``--plan`` reads the plan from the run's state; with it, the
    flag's plan (which the run then checks against the state)."""
    from train.cli.training import _dagger_plan

    plan = Plan.parse("collect wood; place a table")
    again = _dagger_plan(None, {"plan": plan.to_file()}, tmp_path)
    assert again.to_file() == plan.to_file() and again.source == str(tmp_path / "dagger.json")
    assert _dagger_plan(None, {}, tmp_path) is None
    assert _dagger_plan("collect wood", {"plan": plan.to_file()}, tmp_path).to_file() != plan.to_file()


def test_an_expert_factory_that_cannot_be_told_a_task_is_refused_before_anything_runs(
    crafter_demos: str, tmp_path: Path
) -> None:
    from envs.experts.babyai_expert import BabyAIExpert

    out = tmp_path / "run"
    with pytest.raises(EnvSettingError, match="cannot be told"):
        run_dagger(
            tiny_run(), crafter_demos, str(out), envs.CRAFTER_OPEN_ID, BabyAIExpert, plan=WOOD_THEN_TABLE
        )
    assert not out.exists()


def test_init_takes_a_shipped_agent_as_eval_does(crafter_demos: str, tmp_path: Path) -> None:
    """``--init pretrained:<name>`` (bc, dagger, rl) is the shipped agent's folder; an unknown
    name exits 2 listing the shipped ones, before anything is written."""
    from train.cli.common import resolve_init

    folder = resolve_init("pretrained:crafter-all")
    assert Path(folder, "model.safetensors").is_file() and resolve_init(str(tmp_path)) == str(tmp_path)
    out = tmp_path / "run"
    result = run_cli(
        "dagger", "--data", crafter_demos, "--env", envs.CRAFTER_ID, "--out", str(out),
        "--init", "pretrained:nope", check=False,
    )  # fmt: skip
    assert (
        result.returncode == 2 and "no shipped agent 'nope'; shipped: pretrained:crafter-all" in result.stderr
    )
    assert not out.exists()


def test_a_plan_run_evaluates_each_round_by_crafter_s_score(
    crafter_demos: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Asked to evaluate, a plan run plays the open-ended game with its plan and records the
    crafter score (no task succeeds there: a success rate would always read 0)."""
    state = run_dagger(
        tiny_run(eval_episodes=1), crafter_demos, str(tmp_path / "run"), envs.CRAFTER_OPEN_ID,
        "crafter_planner", plan=WOOD_THEN_TABLE,
    )  # fmt: skip
    for entry in state["rounds"]:
        assert "success" not in entry and entry["crafter_score"] >= 0.0
    assert (
        f"round 1: crafter score {state['rounds'][1]['crafter_score']:.2f}, dataset"
        in capsys.readouterr().out
    )
