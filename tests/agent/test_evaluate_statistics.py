"""What `instructcraft eval` reports: per-task and overall success with 95% intervals, the
instruction each mode gives the agent, the Crafter score of open-ended episodes, and the
sensitivity table. Rows are built by hand (or by a scripted agent in a scripted env), so every
number has a known expected value."""

from __future__ import annotations

import math
from typing import Any

import crafter
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import envs
from agent.evaluate import (
    EpisodeJob,
    EvaluationInterrupted,
    crafter_score,
    run_episode,
    sensitivity,
    summarize,
    swapped_instruction,
    wilson_interval,
)
from agent.plan import Plan, PlanFollower
from envs.crafter_tasks import TASKS
from envs.spaces import observation_space


def _row(task: str, success: bool, length: int, **extra: Any) -> dict[str, Any]:
    return {"task": task, "success": success, "length": length, "return": 0.0, "video": None, **extra}


def test_summary_counts_each_task_and_the_whole_run() -> None:
    """The eval report's numbers: per task, episodes / successes / rate / Wilson 95% interval /
    mean length; overall, the pooled rate and interval, the unweighted mean over tasks (each task
    counts once however many episodes it had) and the mean length; tasks listed by name."""
    rows = [
        _row("eat_cow", True, 10),
        _row("collect_wood", True, 4),
        _row("collect_wood", False, 8),
        _row("collect_wood", False, 12),
        _row("eat_cow", True, 20),
    ]
    summary = summarize(rows)
    assert list(summary["tasks"]) == ["collect_wood", "eat_cow"]
    wood = summary["tasks"]["collect_wood"]
    assert wood == {
        "episodes": 3,
        "successes": 1,
        "steps": 24,
        "success_rate": pytest.approx(1 / 3),
        "ci95": pytest.approx(list(wilson_interval(1, 3))),
        "mean_length": pytest.approx(8.0),
    }
    cow = summary["tasks"]["eat_cow"]
    assert (cow["episodes"], cow["successes"], cow["success_rate"]) == (2, 2, 1.0)
    assert cow["ci95"] == pytest.approx(list(wilson_interval(2, 2)))
    assert cow["mean_length"] == pytest.approx(15.0)
    assert summary["episodes"] == 5
    assert summary["success_rate"] == pytest.approx(3 / 5)
    assert summary["ci95"] == pytest.approx(list(wilson_interval(3, 5)))
    assert summary["mean_task_success"] == pytest.approx((1 / 3 + 1.0) / 2)  # not 3/5
    assert summary["mean_length"] == pytest.approx(54 / 5)
    assert "crafter_score" not in summary  # no open-ended episodes


def test_summary_of_no_episodes_is_zero_with_the_widest_interval() -> None:
    """An empty run (every episode filtered out) reports 0 episodes, rate 0 and the interval
    [0, 1] (nothing is known), rather than dividing by zero."""
    summary = summarize([])
    assert summary["episodes"] == 0
    assert summary["success_rate"] == 0.0
    assert summary["ci95"] == [0.0, 1.0]
    assert summary["mean_task_success"] == 0.0
    assert summary["mean_length"] == 0.0
    assert summary["tasks"] == {}


def test_open_ended_episodes_get_the_crafter_score_and_their_mean_return() -> None:
    """Open-ended episodes are scored as crafter scores them (percent of episodes unlocking each
    achievement, geometric mean of 1 + rate, minus 1); the mean return is over those episodes
    only, and a row without its achievements is left out of both."""
    rows = [
        _row("open_ended", False, 100, achievements=["collect_wood"], **{"return": 2.0}),
        _row("open_ended", False, 100, achievements=["collect_wood", "place_table"], **{"return": 4.0}),
        _row("open_ended", False, 100, **{"return": 90.0}),  # no achievements recorded
        _row("collect_wood", True, 5, achievements=["collect_wood"], **{"return": 50.0}),
    ]
    summary = summarize(rows)
    names = list(crafter.constants.achievements)
    rates = {name: 0.0 for name in names} | {"collect_wood": 100.0, "place_table": 50.0}
    assert summary["achievement_rates_percent"] == pytest.approx(rates)
    expected = math.exp(sum(math.log(1 + rate) for rate in rates.values()) / len(names)) - 1
    assert summary["crafter_score"] == pytest.approx(expected)
    assert summary["mean_return"] == pytest.approx(3.0)


def test_crafter_score_is_in_percent_and_zero_without_episodes() -> None:
    """Rates are percentages of episodes (not fractions); no episodes means every rate is 0 and
    the score is 0, not a division error."""
    report = crafter_score([["a"], ["a", "b"], [], ["b", "b"]], ["a", "b", "c"])
    assert report["achievement_rates_percent"] == {"a": 50.0, "b": 50.0, "c": 0.0}
    assert report["crafter_score"] == pytest.approx(math.exp((2 * math.log(51.0)) / 3) - 1)
    empty = crafter_score([], ["a", "b"])
    assert empty == {"crafter_score": 0.0, "achievement_rates_percent": {"a": 0.0, "b": 0.0}}


@pytest.mark.parametrize(("successes", "trials"), [(0, 1), (1, 1), (3, 7), (7, 7), (50, 100), (1, 1000)])
def test_wilson_interval_holds_the_rate_is_mirror_symmetric_and_narrows(successes: int, trials: int) -> None:
    """The 95% interval printed next to every success rate contains the rate, stays in [0, 1],
    treats failures as successes mirror-wise, and shrinks as episodes are added at the same rate."""
    low, high = wilson_interval(successes, trials)
    rate = successes / trials
    assert 0.0 <= low <= rate <= high <= 1.0
    mirror_low, mirror_high = wilson_interval(trials - successes, trials)
    assert (low, high) == pytest.approx((1 - mirror_high, 1 - mirror_low), abs=1e-12)
    more_low, more_high = wilson_interval(successes * 4, trials * 4)
    assert more_high - more_low < high - low


def test_wilson_interval_z_sets_the_confidence() -> None:
    """``z`` is the normal quantile: z=0 collapses the interval onto the rate, a larger z widens it."""
    assert wilson_interval(3, 10, z=0.0) == pytest.approx((0.3, 0.3))
    narrow, wide = wilson_interval(3, 10, z=1.0), wilson_interval(3, 10, z=2.58)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]


class _ScriptedEnv(gym.Env):
    """A Crafter-like env: succeeds on step ``goal``, ends on step ``limit``; reward 1 a step;
    reports achievement counts; renders a frame."""

    def __init__(self, goal: int = 3, limit: int = 5) -> None:
        self.observation_space = observation_space(4, 4)
        self.action_space = spaces.Discrete(3)
        self.goal, self.limit = goal, limit
        self.seeds: list[int | None] = []

    def _observation(self) -> dict[str, Any]:
        return {"image": np.zeros((4, 4, 3), np.uint8), "instruction": "collect wood"}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.seeds.append(seed)
        self.t = 0
        task = (options or {}).get("task", "collect_wood")
        return self._observation(), {"instruction": TASKS[task].phrasings[0], "task": task}

    def step(self, action: Any):
        self.t += 1
        info = {
            "task": "collect_wood",
            "success": self.t == self.goal,
            "achievements": {"place_table": 2, "collect_wood": 1, "eat_cow": 0},
        }
        return self._observation(), 1.0, False, self.t >= self.limit, info

    def render(self) -> np.ndarray:
        return np.zeros((4, 4, 3), np.uint8)


class _Seeds:
    def __init__(self) -> None:
        self.seeds: list[int] = []

    def manual_seed(self, seed: int) -> None:
        self.seeds.append(seed)


class _ScriptedAgent:
    """Records what it is told, the infos it observes and how it is asked to act; always takes
    action 1. Given a plan it follows it as ``Agent`` does (a ``PlanFollower`` started on the
    reset info, told each step's info)."""

    def __init__(self) -> None:
        self.told: list[str | None] = []
        self.generator = _Seeds()
        self.acting_with: list[tuple[bool, float]] = []
        self.observed: list[dict[str, Any]] = []
        self.plan: PlanFollower | None = None
        self.instruction: str | None = None

    def reset(
        self, instruction: str | None = None, plan: Plan | None = None, info: dict[str, Any] | None = None
    ) -> None:
        self.plan = None
        if plan is not None:
            self.plan = PlanFollower(plan)
            instruction = self.plan.start(info or {})
        self.told.append(instruction)
        self.instruction = instruction

    def seed_episode(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def observe(self, info: dict[str, Any]) -> None:
        self.observed.append(info)
        if self.plan is not None:
            self.instruction = self.plan.observe(info)

    def acting(self, deterministic: bool, cfg_scale: float):
        self.acting_with.append((deterministic, cfg_scale))
        return lambda observation, info: 1


def _episode(mode: str, **job: Any) -> tuple[_ScriptedAgent, dict[str, Any]]:
    agent = _ScriptedAgent()
    settings: dict[str, Any] = {"seed": 11, "task": "eat_cow", "mode": mode, "cfg_scale": 0.0, "video": None}
    settings.update(job)
    env = _ScriptedEnv()
    row = run_episode(agent, env, envs.CRAFTER_ID, EpisodeJob(**settings))  # type: ignore[arg-type]
    # Every mode plays the job's seed: correct, swapped and blank are compared on the same worlds.
    assert env.seeds == [settings["seed"]]
    return agent, row


def test_each_mode_tells_the_agent_its_instruction_and_the_row_records_it() -> None:
    """correct: the env's instruction; swapped: the one ``swapped_instruction`` picks for that
    task, seed and pool; blank: no instruction (the learned null), recorded as ""; a phrasing
    job: its own text. The row's ``instruction`` is what the agent was told."""
    agent, row = _episode("correct")
    assert agent.told == [TASKS["eat_cow"].phrasings[0]] and row["instruction"] == agent.told[0]
    pool = ("eat_cow", "collect_wood", "place_table")
    agent, row = _episode("swapped", pool=pool)
    assert agent.told == [swapped_instruction(envs.CRAFTER_ID, "eat_cow", 11, pool)]
    assert row["instruction"] == agent.told[0] and agent.told[0] not in TASKS["eat_cow"].phrasings
    for seed in range(6):  # drawn from the evaluated tasks only, never from the rest
        agent, row = _episode("swapped", seed=seed, pool=("eat_cow", "place_table"))
        assert agent.told[0] in TASKS["place_table"].phrasings, seed
    agent, row = _episode("blank")
    assert agent.told == [None] and row["instruction"] == ""
    agent, row = _episode("phrasing", instruction="fetch some timber")
    assert agent.told == ["fetch some timber"] and row["instruction"] == "fetch some timber"


def test_episode_row_reports_what_happened_and_seeds_sampling_per_episode() -> None:
    """One eval row: the task the env ran, the seed and mode, success, length, return and the
    achievements unlocked (sorted, count > 0); the agent's sampler is seeded with the episode's
    seed (so sampled actions repeat) and acts with the job's deterministic / guidance settings."""
    agent, row = _episode("correct", deterministic=True, cfg_scale=1.5)
    expected = {
        "task": "eat_cow",
        "seed": 11,
        "mode": "correct",
        "instruction": TASKS["eat_cow"].phrasings[0],
        "success": True,
        "length": 5,
        "return": 5.0,
        "video": None,
        "achievements": ["collect_wood", "place_table"],
        "achievement_counts": {"place_table": 2, "collect_wood": 1, "eat_cow": 0},
    }
    assert {key: row[key] for key in expected} == expected
    assert "plan" not in row  # no plan followed, none reported
    assert agent.generator.seeds == [11]
    assert agent.acting_with == [(True, 1.5)]


def test_episode_video_is_written_where_the_job_says(tmp_path) -> None:
    """``--videos``: the episode's frames (the reset's and one per step), upscaled 4x so small
    observations stay legible, go to the job's file."""
    from envs.data.video import read_frames

    target = str(tmp_path / "episode.mp4")
    _, row = _episode("correct", video=target)
    assert row["video"] == target
    assert read_frames(target).shape == (6, 16, 16, 3)


def test_sensitivity_compares_modes_per_task_on_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """`eval --sensitivity`: the three modes run with the same settings; a task absent from a
    mode's run counts as rate 0 there; the gap is correct minus swapped per task, averaged over
    the tasks of the correct run."""
    import agent.evaluate as evaluation

    rates = {"correct": {"a": 0.9, "b": 0.4}, "swapped": {"a": 0.3}, "blank": {"b": 0.2}}
    calls: list[tuple[str, int, dict[str, Any]]] = []

    def fake(env_id: str, episodes: int, *, mode: str, **kwargs: Any) -> dict[str, Any]:
        calls.append((mode, episodes, kwargs))
        return {"tasks": {task: {"success_rate": rate} for task, rate in rates[mode].items()}}

    monkeypatch.setattr(evaluation, "evaluate", fake)
    report = sensitivity(envs.CRAFTER_ID, 6, seed=3, workers=2)
    assert [(mode, episodes) for mode, episodes, _ in calls] == [("correct", 6), ("swapped", 6), ("blank", 6)]
    assert all(kwargs == {"seed": 3, "workers": 2} for _, _, kwargs in calls)
    assert report["tasks"] == {
        "a": {"correct": 0.9, "swapped": 0.3, "blank": 0.0, "correct_minus_swapped": pytest.approx(0.6)},
        "b": {"correct": 0.4, "swapped": 0.0, "blank": 0.2, "correct_minus_swapped": pytest.approx(0.4)},
    }
    assert report["mean_correct_minus_swapped"] == pytest.approx(0.5)
    assert set(report["runs"]) == {"correct", "swapped", "blank"}
    monkeypatch.setattr(evaluation, "evaluate", lambda *args, **kwargs: {"tasks": {}})
    assert sensitivity(envs.CRAFTER_ID, 1)["mean_correct_minus_swapped"] == 0.0


def test_wilson_interval_never_leaves_zero_to_one() -> None:
    """All successes (or none) in a handful of episodes: the interval ends at exactly 1 (or
    starts at exactly 0); unclamped, rounding puts it just past, e.g. at 5 of 5."""
    assert wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 5)[0] == 0.0


def test_a_single_episode_summary_reports_its_own_outcome() -> None:
    """One episode evaluated: the rate is 1 or 0, not averaged with anything."""
    assert summarize([_row("eat_cow", True, 3)])["success_rate"] == 1.0
    assert summarize([_row("eat_cow", False, 3)])["success_rate"] == 0.0


def test_a_swapped_babyai_mission_always_asks_for_something_else() -> None:
    """BabyAI has no task list: the swapped instruction is the mission of another level
    instance, and it always differs from the mission of the episode's own seed, also for seeds
    whose first other instance happens to ask the same thing (117, 220, 292)."""
    level = envs.babyai_id("GoToLocal")
    scratch = gym.make(level)
    for seed in (4, 117, 220, 292):
        mission = scratch.reset(seed=seed)[1]["instruction"]
        swapped = swapped_instruction(level, "GoToLocal", seed)
        assert isinstance(swapped, str) and swapped.startswith("go to ") and swapped != mission, seed
        assert swapped_instruction(level, "GoToLocal", seed) == swapped  # the same on every run


class _GrowingEnv(_ScriptedEnv):
    """Wood is collected on step 2 and nothing else; each info carries its step as ``t``."""

    def step(self, action: Any):
        observation, reward, terminated, truncated, info = super().step(action)
        info = {**info, "t": self.t, "achievements": {"collect_wood": int(self.t >= 2), "place_table": 0}}
        return observation, reward, terminated, truncated, info


def test_an_episode_with_a_plan_tells_each_step_to_the_agent_and_reports_the_plan() -> None:
    """`eval --plan`: the agent starts the plan on the reset info, is told every step's info in
    order, and the row records the plan's first instruction, how many plan steps completed, how
    many times the instruction changed and the instruction in effect at the end."""
    agent = _ScriptedAgent()
    env = _GrowingEnv(goal=99, limit=5)
    plan = Plan.from_dict({"budget": 2, "steps": ["collect wood", "place a table", "drink water"]})
    job = EpisodeJob(seed=4, task="collect_wood", mode="correct", cfg_scale=0.0, video=None, plan=plan)
    row = run_episode(agent, env, envs.CRAFTER_ID, job)  # type: ignore[arg-type]
    assert agent.told == ["collect wood"] and row["instruction"] == "collect wood"
    assert [info["t"] for info in agent.observed] == [1, 2, 3, 4, 5]
    # Step 2 unlocks wood (-> place a table); two steps later its budget ends (-> drink water).
    assert row["plan"] == {"completed": 1, "switches": 2, "last_instruction": "drink water"}
    assert row["achievement_counts"] == {"collect_wood": 1, "place_table": 0}
    assert row["achievements"] == ["collect_wood"]
    assert agent.generator.seeds == [4]


def _interrupting_evaluate(stop_mode: str, error: BaseException, calls: list[tuple[str, str]]):
    def fake(env_id: str, episodes: int, *, mode: str, **kwargs: Any) -> dict[str, Any]:
        calls.append((env_id, mode))
        if mode == stop_mode:
            raise error
        return {"mode": mode, "episodes": episodes, "tasks": {}}

    return fake


def test_ctrl_c_in_sensitivity_keeps_the_modes_that_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the swapped run of `eval --sensitivity`: the error counts the correct run's
    episodes and the swapped run's finished ones out of all three modes' episodes, carries the
    correct run's summary then the partial swapped one, and the rows of the run it stopped."""
    import agent.evaluate as evaluation

    partial, rows = {"mode": "swapped", "episodes": 1}, [{"seed": 3}]
    calls: list[tuple[str, str]] = []
    stopped = EvaluationInterrupted(1, 4, [partial], rows)
    monkeypatch.setattr(evaluation, "evaluate", _interrupting_evaluate("swapped", stopped, calls))
    with pytest.raises(EvaluationInterrupted) as caught:
        sensitivity(envs.CRAFTER_ID, 4, seed=3)
    error = caught.value
    assert calls == [(envs.CRAFTER_ID, "correct"), (envs.CRAFTER_ID, "swapped")]
    assert (error.finished, error.planned, error.exit_code) == (5, 12, 130)
    assert error.results == [{"mode": "correct", "episodes": 4, "tasks": {}}, partial]
    assert error.rows == rows
    assert str(error) == "interrupted after 5 of 12 episodes; the rates above are over those 5"


def test_ctrl_c_before_a_modes_first_episode_keeps_the_earlier_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the blank run is still checking its settings (a KeyboardInterrupt, no
    episode of it finished): the error holds the two finished runs and no rows."""
    import agent.evaluate as evaluation

    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(evaluation, "evaluate", _interrupting_evaluate("blank", KeyboardInterrupt(), calls))
    with pytest.raises(EvaluationInterrupted) as caught:
        sensitivity(envs.CRAFTER_ID, 2)
    error = caught.value
    assert (error.finished, error.planned) == (4, 6)
    assert [run["mode"] for run in error.results] == ["correct", "swapped"]
    assert error.rows == []


class _QuenchedEnv(_ScriptedEnv):
    """Resets with full drink (9) in its info, as a Crafter world starts."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        observation, info = super().reset(seed=seed, options=options)
        return observation, {**info, "inventory": {"drink": 9}, "achievements": {"collect_wood": 0}}


def test_a_plan_starts_on_the_reset_info() -> None:
    """The plan starts on the reset's info: with drink at 9 there, a 'drink < 3' rule stays off
    and the agent is told the plan's first step (a number missing from the info would count as
    0 and fire it)."""
    agent = _ScriptedAgent()
    rule = {"when": "drink < 3", "instruction": "drink water", "until": "drink > 5"}
    plan = Plan.from_dict({"steps": ["collect wood"], "rules": [rule]})
    job = EpisodeJob(seed=2, task="collect_wood", mode="correct", cfg_scale=0.0, video=None, plan=plan)
    row = run_episode(agent, _QuenchedEnv(goal=99, limit=1), envs.CRAFTER_ID, job)  # type: ignore[arg-type]
    assert agent.told == ["collect wood"] and row["instruction"] == "collect wood"
