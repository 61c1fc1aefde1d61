"""When a plan's follower changes instruction, and what it records about each change.

The follower's events are what eval's per-episode ``plan`` field and the rollout captions show
(step, instruction in effect, why); these tests pin their times and reasons, when a plan step
counts as completed, and how rules fire, end, rest and take turns.
"""

from __future__ import annotations

from agent.plan import Plan, PlanFollower


def info(achievements: dict[str, int] | None = None, **inventory: int) -> dict:
    return {
        "achievements": dict(achievements or {}),
        "inventory": {"health": 9, "food": 9, "drink": 9, "energy": 9, **inventory},
    }


DRINK = {"when": "drink < 3", "instruction": "drink water", "until": "drink >= 6", "budget": 4}
EAT = {"when": "food < 3", "instruction": "eat a cow", "until": "food >= 6", "budget": 4}


def test_every_step_of_a_longer_plan_is_reached_in_order() -> None:
    """Protects: the plan moves to the next step, not back to the second, on each unlock."""
    follower = PlanFollower(Plan.parse("collect wood; place a table; make a wood pickaxe; collect stone"))
    follower.start(info())
    seen, counts = [], {}
    for name in ("collect_wood", "place_table", "make_wood_pickaxe", "collect_stone"):
        counts[name] = 1
        seen.append(follower.observe(info(counts)))
    assert seen == ["place a table", "make a wood pickaxe", "collect stone", "collect stone"]
    assert follower.completed == 4 and follower.finished


def test_events_record_the_step_time_the_instruction_and_why() -> None:
    """Protects: events are (env steps so far, instruction now in effect, reason); the start is
    step 0, and each change is stamped with the step whose info caused it."""
    follower = PlanFollower(Plan.from_dict({"budget": 2, "steps": ["collect wood", "place a table"]}))
    follower.start(info())
    follower.observe(info({"collect_wood": 1}))
    follower.observe(info({"collect_wood": 1}))
    follower.observe(info({"collect_wood": 1}))
    assert follower.events == [
        (0, "collect wood", "start"),
        (1, "place a table", "collect_wood unlocked"),
        (3, "place a table", "budget (2 steps)"),
    ]


def test_only_a_count_that_grows_completes_a_step() -> None:
    """Protects: a plan step completes when its achievement's count rises during the step, not
    when an earlier unlock is still counted, and an achievement that first appears in the info
    with count 1 is an unlock."""
    follower = PlanFollower(Plan.parse("collect wood; place a table", loop=True))
    follower.start({"inventory": {}})  # a reset info without achievement counts
    assert follower.observe(info({"collect_wood": 1})) == "place a table"
    assert follower.observe(info({"collect_wood": 1, "place_table": 1})) == "collect wood"
    # Wood is still 1: the looped-back step is not completed by the old wood.
    for _ in range(3):
        assert follower.observe(info({"collect_wood": 1, "place_table": 1})) == "collect wood"
    assert follower.completed == 2


def test_a_plan_started_mid_episode_ignores_what_was_already_unlocked() -> None:
    """Protects: start(info) takes the counts already in info as the baseline (a plan given to
    an agent mid-episode), so wood collected before does not complete 'collect wood'."""
    follower = PlanFollower(Plan.parse("collect wood; place a table"))
    follower.start(info({"collect_wood": 2}))
    assert follower.observe(info({"collect_wood": 2})) == "collect wood"
    assert follower.observe(info({"collect_wood": 3})) == "place a table"


def test_a_rule_that_holds_at_the_start_is_in_effect_from_the_first_step() -> None:
    """Protects: rules are checked at start; the first event then names the rule, not 'start'."""
    follower = PlanFollower(Plan.from_dict({"steps": ["collect wood"], "rules": [DRINK]}))
    assert follower.start(info(drink=1)) == "drink water"
    assert follower.events == [(0, "drink water", "rule: drink < 3")]
    assert follower.source == "rule: drink < 3"


def test_a_rule_fires_only_when_its_when_holds_and_its_until_does_not() -> None:
    """Protects: drink 4 is neither thirsty (< 3) nor quenched (>= 6): the plan keeps going."""
    follower = PlanFollower(Plan.from_dict({"steps": ["collect wood"], "rules": [DRINK]}))
    follower.start(info(drink=4))
    assert follower.observe(info(drink=4)) == "collect wood"
    assert follower.events == [(0, "collect wood", "start")]


def test_a_rule_firing_on_the_step_a_plan_step_ends_records_both_reasons() -> None:
    """Protects: the event says what ended the step and which rule took over, in that order;
    a rule firing alone is recorded with the rule as the reason."""
    follower = PlanFollower(Plan.from_dict({"steps": ["collect wood", "place a table"], "rules": [DRINK]}))
    follower.start(info())
    assert follower.observe(info({"collect_wood": 1}, drink=2)) == "drink water"
    assert follower.events[-1] == (1, "drink water", "collect_wood unlocked; rule: drink < 3")
    assert follower.observe(info({"collect_wood": 1}, drink=6)) == "place a table"
    assert follower.events[-1] == (2, "place a table", "rule done (drink >= 6)")
    assert follower.observe(info({"collect_wood": 1}, drink=2)) == "drink water"
    assert follower.events[-1] == (3, "drink water", "rule: drink < 3")


def test_a_resting_rule_lets_the_next_rule_fire() -> None:
    """Protects: rules are tried in order; one resting after giving up is skipped, and the next
    rule whose numbers call for it takes over."""
    follower = PlanFollower(Plan.from_dict({"steps": ["collect wood"], "rules": [DRINK, EAT]}))
    follower.start(info())
    assert follower.observe(info(drink=1)) == "drink water"
    for _ in range(4):
        current = follower.observe(info(drink=1, food=1))
    assert current == "eat a cow"  # drink water gave up after 4 steps and rests
    assert [event[2] for event in follower.events[-1:]] == ["rule budget (4 steps); rule: food < 3"]


NIGHT = {
    "when": "daylight < 0.3",
    "instruction": "wake up",
    "until": "daylight > 0.5",
    "budget": 10,
    "interrupts": True,
}


def night(daylight: float, achievements: dict[str, int] | None = None, **inventory: int) -> dict:
    return {**info(achievements, **inventory), "daylight": daylight}


def test_a_night_rule_reads_the_frames_daylight_and_ends_at_dawn() -> None:
    """Protects: 'daylight' is read from info['daylight'], not from the status bar's numbers;
    the rule fires on the step the night falls and hands back at dawn."""
    follower = PlanFollower(Plan.from_dict({"steps": ["collect wood"], "rules": [NIGHT]}))
    assert follower.start(night(0.8)) == "collect wood"
    assert follower.observe(night(0.31)) == "collect wood"
    assert follower.observe(night(0.29)) == "wake up"
    assert follower.observe(night(0.5)) == "wake up"
    assert follower.observe(night(0.51)) == "collect wood"
    assert follower.events[-1] == (4, "collect wood", "rule done (daylight > 0.5)")


def test_without_a_reported_daylight_a_night_rule_never_fires() -> None:
    """Protects: an env that reports no daylight reads as full day, never as midnight (0)."""
    follower = PlanFollower(Plan.from_dict({"steps": ["collect wood"], "rules": [NIGHT]}))
    follower.start(info())
    assert follower.observe(info()) == "collect wood"


def test_only_a_rule_marked_interrupts_replaces_a_rule_in_effect() -> None:
    """Protects: a rule in effect keeps the instruction against rules that merely come first
    (the drink rule waits for the eat rule); one marked interrupts takes over at once, the rule
    it replaced ends, and fires again afterwards when its numbers still call for it."""
    plan = Plan.from_dict({"steps": ["collect wood"], "rules": [NIGHT, DRINK, EAT]})
    follower = PlanFollower(plan)
    follower.start(night(0.9))
    assert follower.observe(night(0.9, food=1)) == "eat a cow"
    assert follower.observe(night(0.9, food=1, drink=1)) == "eat a cow"
    assert follower.observe(night(0.2, food=1, drink=1)) == "wake up"
    assert follower.events[-1] == (3, "wake up", "rule: daylight < 0.3")
    assert follower.observe(night(0.2, food=1, drink=1)) == "wake up"  # not replaced by itself
    assert follower.observe(night(0.6, food=1, drink=1)) == "drink water"  # first in order again
    assert follower.events[-1] == (5, "drink water", "rule done (daylight > 0.5); rule: drink < 3")


def test_interrupts_travels_through_the_plan_file_and_back() -> None:
    """Protects: to_file writes interrupts only where it is set, and from_dict reads it back."""
    plan = Plan.from_dict({"steps": ["collect wood"], "rules": [NIGHT, DRINK]})
    data = plan.to_file()
    assert data["rules"][0]["interrupts"] is True and "interrupts" not in data["rules"][1]
    assert Plan.from_dict(data).rules == plan.rules
