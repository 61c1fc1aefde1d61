"""What a plan file or ``--plan`` string may say, and what a refused one tells its author.

docs/plans.md promises that a plan which cannot be followed fails before any episode with a
message naming the file (or ``--plan``), the entry and the offending value; these tests hold the
reader to that, entry kind by entry kind, and pin what each accepted form means.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import agent.plan
from agent.plan import Condition, Plan, PlanError
from envs.crafter_tasks import TASKS


def load_text(tmp_path: Path, text: str, name: str = "plan.yaml") -> Plan:
    path = tmp_path / name
    path.write_text(text)
    return Plan.load(path)


def refusal(tmp_path: Path, text: str, name: str = "plan.yaml") -> str:
    with pytest.raises(PlanError) as caught:
        load_text(tmp_path, text, name)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / name)) or f"plan file {tmp_path / name}" in message
    return message


# -- budgets -----------------------------------------------------------------------------------
def test_a_budget_is_a_positive_whole_number_of_steps(tmp_path: Path) -> None:
    """Protects: budget 1 is allowed; 0, true, 2.5 and "10" are refused, quoting the value."""
    plan = load_text(tmp_path, "steps: [{task: collect_wood, budget: 1}]")
    assert plan.steps[0].budget == 1
    for value, shown in [("0", "0"), ("true", "True"), ("2.5", "2.5"), ("'10'", "'10'")]:
        message = refusal(tmp_path, f"steps: [{{task: collect_wood, budget: {value}}}]")
        assert message.endswith(f"step 1: budget must be a positive integer (env steps), got {shown}")
    message = refusal(tmp_path, "budget: 0\nsteps: [collect wood]")
    assert message == f"{tmp_path / 'plan.yaml'}: budget must be a positive integer (env steps), got 0"


def test_budgets_default_to_the_plans_then_to_each_tasks_step_limit(tmp_path: Path) -> None:
    """Protects: a step or rule without a budget takes the plan's, else its task's step limit."""
    text = (
        "steps: [collect wood, {task: place_table}, {instruction: chop down a tree, task: collect_wood}]\n"
        "rules: [{when: 'drink < 3', task: collect_drink, until: 'drink >= 6'}]"
    )
    plan = load_text(tmp_path, text)
    limits = [
        TASKS["collect_wood"].step_limit,
        TASKS["place_table"].step_limit,
        TASKS["collect_wood"].step_limit,
    ]
    assert [step.budget for step in plan.steps] == limits
    assert plan.rules[0].budget == TASKS["collect_drink"].step_limit
    plan = load_text(tmp_path, "budget: 7\n" + text)
    assert [step.budget for step in plan.steps] == [7, 7, 7] and plan.rules[0].budget == 7
    assert Plan.parse("collect wood; place a table", budget=9).steps[1].budget == 9


def test_an_inline_budget_error_names_the_plan_flag() -> None:
    """Protects: a bad budget given with --plan names --plan."""
    with pytest.raises(PlanError, match=r"^--plan: budget must be a positive integer \(env steps\), got 0$"):
        Plan.parse("collect wood", budget=0)


# -- steps -------------------------------------------------------------------------------------
def test_a_step_mapping_keeps_its_own_instruction_and_takes_its_tasks_achievement(tmp_path: Path) -> None:
    """Protects: {instruction, task} keeps the text as written (spaces collapsed) and ends on the
    task's achievement; {task} alone means the task's first phrasing; a phrasing alone finds its
    task."""
    plan = load_text(
        tmp_path,
        "steps:\n"
        "  - {instruction: '  go   get some logs ', task: collect_wood}\n"
        "  - {task: place_table}\n"
        "  - {instruction: craft a wooden pickaxe}\n",
    )
    assert [(s.instruction, s.achievement) for s in plan.steps] == [
        ("go get some logs", "collect_wood"),
        (TASKS["place_table"].phrasings[0], "place_table"),
        ("craft a wooden pickaxe", "make_wood_pickaxe"),
    ]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("5", "step 2: expected an instruction or a mapping, got int 5"),
        (
            "{task: collect_wood, time: 3}",
            "step 2: unknown key(s) ['time']; a step has instruction, task, budget",
        ),
        ("{budget: 3}", "step 2: give an instruction, a task, or both"),
        (
            "{instruction: '   ', task: collect_wood}",
            "step 2: the instruction must be non-empty text, got '   '",
        ),
        ("{instruction: 5, task: collect_wood}", "step 2: the instruction must be non-empty text, got 5"),
    ],
)
def test_a_bad_step_is_refused_naming_it(entry: str, expected: str, tmp_path: Path) -> None:
    """Protects: each way a step can be wrong has its own message, naming the step."""
    message = refusal(tmp_path, f"steps:\n  - collect wood\n  - {entry}\n")
    assert message == f"{tmp_path / 'plan.yaml'}: {expected}"


def test_an_unknown_task_or_phrasing_lists_the_known_tasks(tmp_path: Path) -> None:
    """Protects: the message says how to write a free instruction and lists the task names."""
    known = ", ".join(sorted(TASKS))
    message = refusal(tmp_path, "- fly to the moon")
    assert message.endswith(
        "step 1: 'fly to the moon' is neither a task name nor one of a task's phrasings, so nothing says "
        f"when it is done: write it as {{instruction: ..., task: <task>}} (known tasks: {known})"
    )
    message = refusal(tmp_path, "- {task: build_rocket}")
    assert message.endswith(f"step 1: unknown task 'build_rocket'; known tasks: {known}")


def test_long_values_are_quoted_up_to_80_characters() -> None:
    """Protects: a value whose repr fits in 80 characters is quoted whole, a longer one is cut
    there with its length, so a pasted paragraph does not flood the terminal."""
    fits = "x" * 78  # repr adds the two quotes: 80 characters
    with pytest.raises(PlanError) as caught:
        Plan.from_dict({"steps": [{"task": fits}]})
    assert f"unknown task {fits!r};" in str(caught.value)
    longer = "x" * 79  # 81 characters
    with pytest.raises(PlanError) as caught:
        Plan.from_dict({"steps": [{"task": longer}]})
    assert f"unknown task {repr(longer)[:80]}... (81 characters);" in str(caught.value)


# -- rules -------------------------------------------------------------------------------------
def test_a_rule_may_name_its_task_instead_of_an_instruction(tmp_path: Path) -> None:
    """Protects: {when, task, until} uses the task's first phrasing as the rule's instruction."""
    plan = load_text(
        tmp_path,
        "steps: [collect wood]\nrules: [{when: 'food < 3', task: eat_cow, until: 'food > 6', budget: 40}]",
    )
    rule = plan.rules[0]
    assert (rule.instruction, str(rule.when), str(rule.until), rule.budget) == (
        TASKS["eat_cow"].phrasings[0],
        "food < 3",
        "food > 6",
        40,
    )


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("drink water", "rule 1: expected a mapping with when, instruction, until; got str 'drink water'"),
        (
            "{when: 'drink < 3', instruction: drink water, until: 'drink > 5', every: 3}",
            "rule 1: unknown key(s) ['every']; a rule has when, instruction, task, until, budget, interrupts",
        ),
        (
            "{when: 'daylight < 0.3', instruction: wake up, until: 'daylight > 0.5', interrupts: 1}",
            "rule 1: interrupts must be true or false, got 1",
        ),
        ("{instruction: drink water}", "rule 1: missing when, until"),
        ("{when: 'drink < 3', until: 'drink > 5'}", "rule 1: give an instruction, a task, or both"),
        (
            "{when: 'drink < 3', instruction: sip, until: 'drink > 5'}",
            "rule 1: 'sip' is neither a task name nor one of a task's phrasings",
        ),
        (
            "{when: 'drink < 3', instruction: drink water, until: 'drink > 5', budget: 0}",
            "rule 1: budget must be a positive integer (env steps), got 0",
        ),
        (
            "{when: 'drink < 3', instruction: drink water, until: drink}",
            "rule 1: until: expected a condition like 'drink < 4', got 'drink'",
        ),
        (
            "{when: 5, instruction: drink water, until: 'drink > 5'}",
            "rule 1: when: expected a condition like 'drink < 4', got 5",
        ),
        (
            "{when: 'thirst < 3', instruction: drink water, until: 'drink > 5'}",
            "rule 1: when: unknown number 'thirst' in 'thirst < 3'; known: "
            + ", ".join(agent.plan.VISIBLE_NUMBERS),
        ),
    ],
)
def test_a_bad_rule_is_refused_naming_it(entry: str, expected: str, tmp_path: Path) -> None:
    """Protects: each way a rule can be wrong has its own message, naming the rule."""
    message = refusal(tmp_path, f"steps: [collect wood]\nrules:\n  - {entry}\n")
    assert message.startswith(f"{tmp_path / 'plan.yaml'}: {expected}")


def test_a_number_the_info_does_not_carry_counts_as_zero() -> None:
    """Protects: a condition over a number absent from the info reads it as 0 (an empty
    inventory slot), so 'wood < 1' holds and 'wood >= 1' does not."""
    assert Condition("wood", "<", 1.0).holds({})
    assert not Condition("wood", ">=", 1.0).holds({"health": 9})


# -- the plan as a whole -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", "expected a mapping with 'steps' (or a list of steps), got int 5"),
        ("loop: yes please\nsteps: [collect wood]", "loop must be true or false, got 'yes please'"),
        ("loop: true", "steps must be a list of instructions, got nothing"),
        ("steps: collect wood", "steps must be a list of instructions, got str 'collect wood'"),
        ("steps: [collect wood]\nrules: drink water", "rules must be a list, got str 'drink water'"),
    ],
)
def test_a_bad_plan_shape_is_refused_naming_the_file(text: str, expected: str, tmp_path: Path) -> None:
    """Protects: the plan-level messages, each naming the file and what it found."""
    assert refusal(tmp_path, text) == f"{tmp_path / 'plan.yaml'}: {expected}"


def test_plans_remember_where_they_came_from(tmp_path: Path) -> None:
    """Protects: a plan's source (shown in eval's summary and in errors) is its file, --plan for
    an inline one, <plan> for one built from a mapping; an inline plan does not loop unless
    asked."""
    path = tmp_path / "plan.yaml"
    path.write_text("- collect wood\n")
    assert Plan.load(path).source == str(path)
    inline = Plan.parse("collect wood; place a table")
    assert inline.source == "--plan" and inline.loop is False
    with pytest.raises(PlanError, match=r"^--plan: step 2: 'fly' is neither"):
        Plan.parse("collect wood; fly")
    assert Plan.from_dict({"steps": ["collect wood"]}).source == "<plan>"
    with pytest.raises(PlanError, match=r"^<plan>: the plan has no steps$"):
        Plan.from_dict({"steps": []})
    inline = Plan.parse("chop down a tree")
    with pytest.raises(PlanError, match=r"^--plan: instruction 'chop down a tree' has 4 tokens"):
        inline.check_lengths(lambda text: len(text.split()), 3)


def test_plan_flag_reads_files_by_suffix_or_existence_and_inline_text_otherwise(tmp_path: Path) -> None:
    """Protects: --plan x.yaml / x.yml / x.json is a file (a missing one is reported missing, not
    read as an instruction); any existing file is read; anything else is the inline form."""
    for name in ("gone.yaml", "gone.yml", "gone.json"):
        with pytest.raises(PlanError, match=f"plan file {re.escape(str(tmp_path / name))} does not exist"):
            Plan.from_arg(str(tmp_path / name))
    bare = tmp_path / "plan"
    bare.write_text("- place a table\n")
    assert [step.instruction for step in Plan.from_arg(str(bare)).steps] == ["place a table"]
    inline = Plan.from_arg("collect wood; place a table")
    assert [step.achievement for step in inline.steps] == ["collect_wood", "place_table"]
    assert inline.source == "--plan"


def test_a_json_plan_is_read_as_json_and_bad_syntax_names_the_format(tmp_path: Path) -> None:
    """Protects: a .json file must be JSON (YAML in it is refused as invalid json); a file
    without a suffix is read as YAML and reported as such."""
    message = refusal(tmp_path, "- collect wood\n", name="plan.json")
    assert message.startswith(f"plan file {tmp_path / 'plan.json'} is not valid json: ")
    message = refusal(tmp_path, "steps: [collect wood\n", name="plan.yaml")
    assert message.startswith(f"plan file {tmp_path / 'plan.yaml'} is not valid yaml: ")
    message = refusal(tmp_path, "steps: [collect wood\n", name="plan")
    assert message.startswith(f"plan file {tmp_path / 'plan'} is not valid YAML: ")


def test_undecodable_bytes_become_a_plan_error_naming_the_step(tmp_path: Path) -> None:
    """Protects: a file with bytes that are not UTF-8 is still read (the bytes become U+FFFD)
    so the refusal names the step instead of a UnicodeDecodeError."""
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"- collect wood\n- caf\xff\xfe\n")
    with pytest.raises(PlanError, match=r"step 2: 'caf\ufffd\ufffd' is neither a task name"):
        Plan.load(path)


def test_the_size_limit_allows_exactly_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Protects: a plan file of exactly MAX_PLAN_BYTES is read; one byte more is refused with
    both sizes."""
    monkeypatch.setattr(agent.plan, "MAX_PLAN_BYTES", 64)
    path = tmp_path / "plan.yaml"
    path.write_text("- collect wood\n".ljust(63, "#") + "\n")
    assert path.stat().st_size == 64
    assert Plan.load(path).steps[0].instruction == "collect wood"
    path.write_text("- collect wood\n".ljust(64, "#") + "\n")
    with pytest.raises(PlanError, match=r"^plan file .* is 65 bytes; a plan is at most 64$"):
        Plan.load(path)


def test_the_plan_as_eval_reports_it() -> None:
    """Protects: to_dict, the plan in eval's summary: loop, every step with its achievement and
    budget, every rule with its conditions written back as text and its task."""
    plan = Plan.from_dict(
        {
            "loop": True,
            "steps": [{"task": "collect_wood", "budget": 30}, "place a table"],
            "rules": [
                {"when": "drink < 3", "instruction": "drink water", "until": "drink >= 6.5", "budget": 4}
            ],
        }
    )
    assert plan.to_dict() == {
        "loop": True,
        "steps": [
            {"instruction": "collect wood", "achievement": "collect_wood", "budget": 30},
            {"instruction": "place a table", "achievement": "place_table", "budget": 150},
        ],
        "rules": [
            {
                "when": "drink < 3",
                "instruction": "drink water",
                "until": "drink >= 6.5",
                "budget": 4,
                "task": "collect_drink",
            }
        ],
    }


def test_a_plan_file_that_cannot_be_read_is_named_with_the_systems_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protects: a plan file that exists but cannot be read (permissions, a failing disk) is
    refused as a PlanError naming the file and the system's reason in words, not Python's
    errno form, so the command prints one line its author can act on."""
    path = tmp_path / "plan.yaml"
    path.write_text("steps: [collect wood]")

    def unreadable(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", unreadable)
    with pytest.raises(PlanError) as caught:
        Plan.load(path)
    assert str(caught.value) == f"cannot read plan file {path}: Permission denied"


# -- the shipped plans ---------------------------------------------------------------------------
SHIPPED_PLANS = sorted((Path(__file__).resolve().parents[2] / "configs" / "plans").glob("*.yaml"))


def test_the_shipped_plans_load_and_aim_at_every_achievement_crafter_scores() -> None:
    """Protects: a plan in configs/plans that no longer loads, or that leaves one of crafter's 22
    achievements to chance (neither a step nor a rule asks for it), fails here, not in a game."""
    from envs.crafter_score import ACHIEVEMENTS

    assert SHIPPED_PLANS, "configs/plans holds no plan"
    for path in SHIPPED_PLANS:
        plan = Plan.load(path)
        asked = {step.achievement for step in plan.steps} | {rule.task for rule in plan.rules}
        assert set(ACHIEVEMENTS) <= asked, f"{path.name} never asks for {sorted(set(ACHIEVEMENTS) - asked)}"


def test_the_wood_first_plan_is_the_shipped_plan_in_its_earlier_order() -> None:
    """Protects: the results measured with the wood-first order reproduce only if that file keeps
    the shipped plan's steps, budgets and rules; only the order of the steps differs."""
    plans = {path.stem: Plan.load(path) for path in SHIPPED_PLANS}
    shipped, earlier = plans["tech_tree"], plans["tech_tree_wood_first"]
    assert shipped.rules == earlier.rules and shipped.loop == earlier.loop
    assert sorted(map(repr, shipped.steps)) == sorted(map(repr, earlier.steps))
    assert shipped.steps != earlier.steps
    assert earlier.steps[0].achievement == "collect_wood"
    assert [step.achievement for step in shipped.steps[:2]] == ["collect_sapling", "place_plant"]
