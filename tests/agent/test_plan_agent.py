"""An agent following a plan: a new instruction mid-episode keeps the history, and the next
action is the one an agent told that instruction from the start of the same frames would take."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import make_tiny_config

import envs
from agent import Agent
from agent.evaluate import evaluate
from agent.plan import Plan, PlanFollower
from envs.experts import make_expert
from policies import FUSIONS, InstructionPolicy


def tiny_agent(fusion_type: str, max_history: int = 512) -> Agent:
    config = make_tiny_config(fusion_type, max_history=max_history).replace(
        **{"vision.image_size": [64, 64], "vision.channels": [8, 16]}
    )
    torch.manual_seed(0)
    policy = InstructionPolicy(config)
    for parameter in policy.parameters():  # larger weights, so every input moves the logits
        parameter.data.normal_(0, 0.3)
    return Agent(policy, seed=0)


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("fusion_type", sorted(FUSIONS))
@pytest.mark.parametrize("max_history", [512, 3])
def test_a_switch_acts_as_if_told_from_the_start(fusion_type: str, max_history: int) -> None:
    """Cross-attention only swaps the query; a fusion whose cache read the old text re-encodes
    the held frames; a window shorter than the episode keeps its absolute times either way."""
    switched, told = tiny_agent(fusion_type, max_history), tiny_agent(fusion_type, max_history)
    switched.reset("collect wood")
    told.reset("place a table")
    seen = frames(7)
    for index, frame in enumerate(seen):
        if index == 5:
            switched.switch_instruction("place a table")
            assert switched.instruction == "place a table"
        switched.act({"image": frame}, deterministic=True)
        told.act({"image": frame}, deterministic=True)
        same = torch.allclose(switched.last_logits, told.last_logits, atol=1e-5)
        assert same == (index >= 5), f"step {index}: logits {'differ' if index >= 5 else 'agree'}"
    assert switched.step_count == told.step_count == 7


def test_a_switch_refuses_an_instruction_the_encoder_would_cut() -> None:
    agent = tiny_agent("cross_attention")
    agent.reset("collect wood")
    limit = agent.policy.config.text.max_tokens
    with pytest.raises(ValueError, match="tokens, more than the text encoder's"):
        agent.switch_instruction(" ".join(["wood"] * (limit + 5)))
    assert agent.instruction == "collect wood"


def test_a_plan_moves_on_exactly_when_the_first_achievement_unlocks() -> None:
    """The expert chops a tree while the agent follows a two-step plan; on the step after the
    one whose info shows collect_wood, the agent's state reads the second instruction."""
    agent = tiny_agent("cross_attention")
    env = gym.make(envs.CRAFTER_ID, task="collect_wood")
    expert = make_expert("crafter_planner")
    observation, info = env.reset(seed=3)
    expert.reset(env, observation, info)
    follower = PlanFollower(Plan.parse("collect wood; place a table"))
    agent.reset(follower.start(info))
    second = agent.policy.encode_instructions(["place a table"])
    told_at: list[str] = []
    for _ in range(100):
        told_at.append(agent.instruction)
        agent.act(observation)
        observation, _, terminated, truncated, info = env.step(expert.act(observation, info))
        instruction = follower.observe(info)
        if instruction != agent.instruction:
            agent.switch_instruction(instruction)
        if terminated or truncated:
            break
    unlocked = told_at.count("collect wood")
    assert info["achievements"]["collect_wood"] == 1 and unlocked == len(told_at)
    assert agent.instruction == "place a table"
    assert torch.equal(agent._state.text, second)
    assert follower.events[1][:2] == (unlocked, "place a table")


def test_eval_with_a_plan_advances_on_the_budget_and_reports_it(tmp_path) -> None:
    agent = tiny_agent("cross_attention")
    plan = Plan.from_dict({"budget": 4, "steps": ["collect wood", "place a table", "drink water"]})
    result = evaluate(
        envs.CRAFTER_ID, 2, agent=agent, tasks=["collect_stone"], plan=plan, env_kwargs={"step_limit": 10}
    )
    for row in result["per_episode"]:
        assert row["length"] == 10
        # 10 steps at 4 a step: two budget expiries, the third instruction held to the end.
        assert row["plan"] == {"completed": 0, "switches": 2, "last_instruction": "drink water"}
    assert result["plan"]["steps"][2]["instruction"] == "drink water"


def test_rollout_and_attention_follow_a_plan_and_show_each_steps_instruction(tmp_path) -> None:
    from agent.attention import record_rollout, viewer_payload
    from agent.rollout import rollout_episode

    plan = Plan.from_dict({"budget": 3, "steps": ["collect wood", "place a table"]})
    agent = tiny_agent("cross_attention")
    env = gym.make(envs.CRAFTER_ID, task="collect_stone", step_limit=7)
    row = rollout_episode(agent, env, seed=1, plan=plan)
    assert [(e["step"], e["instruction"]) for e in row["plan"]["events"]] == [
        (0, "collect wood"),
        (3, "place a table"),
        (6, "place a table"),  # the second budget ran out: the plan holds its last step
    ]
    assert len(row["captioned"]) == row["length"] + 1 == 8
    agent = Agent(agent.policy, capture_attention=True)
    recording = record_rollout(
        agent, envs.CRAFTER_ID, seed=1, plan=plan, env_kwargs={"task": "collect_stone", "step_limit": 7}
    )
    assert recording.instruction_changes == [(0, "collect wood"), (3, "place a table")]
    assert viewer_payload(recording)["instruction_changes"] == [[0, "collect wood"], [3, "place a table"]]
    with pytest.raises(ValueError, match="an instruction or a plan, not both"):
        agent.reset("collect wood", plan=plan, info={})


def test_rules_need_an_env_that_reports_the_status_numbers() -> None:
    """BabyAI draws no status bar: a plan with rules would read every number as 0 and fire a
    "drink < 4" rule forever, so it is refused at reset; a plan without rules is fine."""
    agent = tiny_agent("cross_attention")
    with_rules = Plan.from_dict(
        {
            "steps": ["collect wood"],
            "rules": [{"when": "drink < 4", "instruction": "drink water", "until": "drink >= 8"}],
        }
    )
    with pytest.raises(ValueError, match=r"its rules read the status numbers .* this env reports none"):
        agent.reset(plan=with_rules, info={"instruction": "go to the red ball"})
    agent.reset(plan=Plan.parse("collect wood"), info={"instruction": "go to the red ball"})
    assert agent.instruction == "collect wood"
