"""`envs` lists every level's step limit, and `bench policy --quick` names goals only for the
keys it computed."""

from __future__ import annotations

import json

import pytest
from helpers import make_tiny_config, run_cli


def test_envs_lists_the_babyai_step_limits() -> None:
    rows = {row["env_id"]: row["tasks"] for row in json.loads(run_cli("envs", "--json").stdout)}
    assert rows["instructcraft/BabyAI-GoToLocal-v0"]["GoToLocal"]["step_limit"] == 64
    assert rows["instructcraft/BabyAI-GoTo-v0"]["GoTo"]["step_limit"] == 576
    assert all("step_limit" in task for tasks in rows.values() for task in tasks.values())
    assert "(limit 64)" in run_cli("envs").stdout.split("GoToLocal-v0")[1].splitlines()[1]


def test_quick_policy_bench_goals_name_computed_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import policies
    from train.bench import bench_policy

    tiny = make_tiny_config().replace(**{"fusion_kwargs.max_history": 600})
    monkeypatch.setattr(policies, "PolicyConfig", lambda: tiny)
    results = bench_policy(quick=True)
    assert results["goals"] and set(results["goals"]) <= set(results)
    assert all("goal set for T" in goal for goal in results["goals"].values())


def test_a_long_episode_keeps_an_eval_worker_flat_once_the_window_is_full() -> None:
    from train.bench.policy import _long_episode_memory

    memory = _long_episode_memory(600, 16)
    assert memory["long_episode_steps"] == 600
    assert 0 < memory["rss_mib_step1_T16"] <= memory["rss_mib_step16_T16"] + 1
    # A frame kept per step would add 7 MiB over these 584 steps (64 x 64 x 3 bytes each).
    assert memory["rss_growth_mib_after_window"] < 4, memory
