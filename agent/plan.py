"""Instruction plans: an ordered list of instructions an agent follows within one episode.

A plan is data (``Plan``: steps, rules, whether it loops) read from YAML/JSON or from a
``"collect wood; place a table"`` string; ``PlanFollower`` is the runtime that says which
instruction is in effect at each step.

The follower moves to the next step when the current step's achievement unlocks (its count in
``info["achievements"]`` grows: the same event that crafter rewards with +1) or when the step
has used its budget of env steps. Rules interrupt the plan when a number the agent sees drawn
in the frame calls for it: crafter draws health, food, drink and energy and the inventory's
items as counters in its status bar, and ``info["inventory"]`` holds exactly those numbers;
``daylight`` (0 at midnight, 1 at noon; ``info["daylight"]``) is how dark crafter draws the
whole frame.
While a rule is in effect its instruction replaces the plan's; it ends when its ``until``
condition holds or its budget runs out, and the plan resumes the step it left (that step's
budget keeps counting only while it is in effect). A rule that ran out of budget rests for as
many steps before it may fire again, so an unreachable need cannot hold the agent forever.

Plan file::

    loop: true          # after the last step, start again from the first (false: hold the last)
    budget: 300         # steps per instruction (default: each task's own step limit)
    steps:
      - collect wood                             # a phrasing of a task, or a task name
      - {task: place_table, budget: 200}         # the task's first phrasing
      - {instruction: "craft a wooden pickaxe", task: make_wood_pickaxe}
    rules:              # checked in order before every step; the first that fires wins (a rule
                        # in effect gives way only to one marked interrupts: true)
      - {when: "drink < 4", instruction: "drink water", until: "drink >= 8"}
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import PlanError
from envs.crafter_tasks import TASKS, task_of_phrasing

MAX_PLAN_BYTES = 1 << 20  # a plan is a short list; a bigger file is a mistake
# The numbers crafter draws in its status bar and inventory (crafter.constants.items).
VISIBLE_NUMBERS: tuple[str, ...] = (
    "health",
    "food",
    "drink",
    "energy",
    "sapling",
    "wood",
    "stone",
    "coal",
    "iron",
    "diamond",
    "wood_pickaxe",
    "stone_pickaxe",
    "iron_pickaxe",
    "wood_sword",
    "stone_sword",
    "iron_sword",
    "daylight",  # not a counter: crafter darkens the whole frame by it at night
)
_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_CONDITION = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Condition:
    """``name op value`` over the visible numbers, e.g. ``drink < 4``."""

    name: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: Any, where: str) -> Condition:
        match = _CONDITION.match(text) if isinstance(text, str) else None
        if match is None:
            raise PlanError(f"{where}: expected a condition like 'drink < 4', got {_short(text)}")
        name, op, value = match.groups()
        if name not in VISIBLE_NUMBERS:
            raise PlanError(
                f"{where}: unknown number {name!r} in {text!r}; known: {', '.join(VISIBLE_NUMBERS)}"
            )
        return cls(name, op, float(value))

    def holds(self, numbers: Mapping[str, Any]) -> bool:
        return _COMPARISONS[self.op](float(numbers.get(self.name, 0)), self.value)

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.value:g}"


@dataclass(frozen=True)
class PlanStep:
    """One instruction, the achievement that completes it and its budget in env steps."""

    instruction: str
    achievement: str
    budget: int


@dataclass(frozen=True)
class Rule:
    """Replace the plan's instruction with ``instruction`` while ``when`` held at the start and
    ``until`` does not hold yet (at most ``budget`` steps at a time)."""

    when: Condition
    instruction: str
    until: Condition
    budget: int
    task: str | None = None  # the task the instruction asks for (an expert labels it)
    interrupts: bool = False  # may replace another rule in effect (else it waits its turn)


@dataclass(frozen=True)
class Plan:
    steps: tuple[PlanStep, ...]
    rules: tuple[Rule, ...] = ()
    loop: bool = False
    source: str = "<plan>"

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, budget: int | None = None, loop: bool = False) -> Plan:
        """A plan from ``"collect wood; place a table; ..."`` (the ``--plan`` flag's inline form)."""
        entries = [part.strip() for part in text.split(";") if part.strip()]
        return cls.from_dict({"steps": entries, "budget": budget, "loop": loop}, source="--plan")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """A plan from a YAML or JSON file (a mapping with ``steps``, or just the list of steps)."""
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {path} does not exist or is not a regular file")
        if path.stat().st_size > MAX_PLAN_BYTES:
            raise PlanError(
                f"plan file {path} is {path.stat().st_size} bytes; a plan is at most {MAX_PLAN_BYTES}"
            )
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            raise PlanError(f"cannot read plan file {path}: {error.strerror or error}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise PlanError(
                f"plan file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {error}"
            ) from None
        if isinstance(data, list):
            data = {"steps": data}
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_arg(cls, value: str) -> Plan:
        """``--plan`` takes a file (``.yaml``, ``.yml``, ``.json``) or an inline ``a; b; c`` list."""
        if value.endswith((".yaml", ".yml", ".json")) or Path(value).is_file():
            return cls.load(value)
        return cls.parse(value)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<plan>") -> Plan:
        if not isinstance(data, dict):
            raise PlanError(
                f"{source}: expected a mapping with 'steps' (or a list of steps), got {_kind(data)}"
            )
        unknown = sorted(set(data) - {"steps", "rules", "loop", "budget"})
        if unknown:
            raise PlanError(f"{source}: unknown key(s) {unknown}; a plan has steps, rules, loop, budget")
        budget = data.get("budget")
        if budget is not None:
            budget = _budget(budget, f"{source}: budget")
        loop = data.get("loop", False)
        if not isinstance(loop, bool):
            raise PlanError(f"{source}: loop must be true or false, got {_short(loop)}")
        entries = data.get("steps")
        if not isinstance(entries, list):
            raise PlanError(f"{source}: steps must be a list of instructions, got {_kind(entries)}")
        if not entries:
            raise PlanError(f"{source}: the plan has no steps")
        steps = tuple(_step(entry, budget, f"{source}: step {i + 1}") for i, entry in enumerate(entries))
        rule_entries = data.get("rules") or []
        if not isinstance(rule_entries, list):
            raise PlanError(f"{source}: rules must be a list, got {_kind(rule_entries)}")
        rules = tuple(_rule(entry, budget, f"{source}: rule {i + 1}") for i, entry in enumerate(rule_entries))
        return cls(steps, rules, loop, source)

    # -- checks and views ---------------------------------------------------------------------
    @property
    def instructions(self) -> list[str]:
        """Every instruction the plan can put in effect (steps, then rules), without repeats."""
        seen = [step.instruction for step in self.steps] + [rule.instruction for rule in self.rules]
        return list(dict.fromkeys(seen))

    def check_lengths(self, count_tokens: Callable[[str], int], max_tokens: int) -> None:
        """Refuse an instruction the text encoder would cut short, naming it and its length."""
        for text in self.instructions:
            tokens = count_tokens(text)
            if tokens > max_tokens:
                raise PlanError(
                    f"{self.source}: instruction {_short(text)} has {tokens} tokens, more than the text "
                    f"encoder's max_tokens={max_tokens}: shorten it"
                )

    def to_file(self) -> dict[str, Any]:
        """The plan as a plan file's mapping: ``from_dict`` reads it back to an equal plan."""
        return {
            "loop": self.loop,
            "steps": [
                {"instruction": step.instruction, "task": step.achievement, "budget": step.budget}
                for step in self.steps
            ],
            "rules": [
                {
                    "when": str(rule.when),
                    "instruction": rule.instruction,
                    "task": rule.task,
                    "until": str(rule.until),
                    "budget": rule.budget,
                    **({"interrupts": True} if rule.interrupts else {}),
                }
                for rule in self.rules
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        """The plan as eval's summary reports it: a plan file's mapping whose steps name the
        achievement that completes them."""
        data = self.to_file()
        data["steps"] = [
            {"instruction": step["instruction"], "achievement": step["task"], "budget": step["budget"]}
            for step in data["steps"]
        ]
        return data


@dataclass
class PlanFollower:
    """Which instruction of ``plan`` is in effect, step by step.

    ``start(info)`` at reset returns the first instruction; ``observe(info)`` after each env step
    returns the instruction for the next step. ``events`` records every change as
    ``(step, instruction, why)``; ``completed`` counts plan steps whose achievement unlocked.
    """

    plan: Plan
    step_index: int = 0
    completed: int = 0
    finished: bool = False
    events: list[tuple[int, str, str]] = field(default_factory=list)
    _spent: int = 0  # env steps the current plan step has been in effect
    _rule: Rule | None = None
    _rule_spent: int = 0
    _time: int = 0
    _counts: dict[str, int] = field(default_factory=dict)
    _resting: dict[Rule, int] = field(default_factory=dict)  # rule -> time it may fire again

    @property
    def current(self) -> str:
        return self._rule.instruction if self._rule else self.plan.steps[self.step_index].instruction

    @property
    def current_task(self) -> str | None:
        """The task the instruction in effect asks for (a plan step's achievement names it)."""
        return self._rule.task if self._rule else self.plan.steps[self.step_index].achievement

    @property
    def source(self) -> str:
        """What put the current instruction in effect: ``step N`` or ``rule: <when>``."""
        return f"rule: {self._rule.when}" if self._rule else f"step {self.step_index + 1}"

    def start(self, info: Mapping[str, Any]) -> str:
        self.step_index, self.completed, self.finished = 0, 0, False
        self._spent, self._rule, self._rule_spent, self._time = 0, None, 0, 0
        self._counts = dict(info.get("achievements") or {})
        self._resting = {}
        self.events = []
        self._check_rules(_numbers(info))
        self.events.append((0, self.current, "start" if self._rule is None else self.source))
        return self.current

    def observe(self, info: Mapping[str, Any]) -> str:
        """Account for one env step whose resulting ``info`` is given; the next instruction."""
        self._time += 1
        counts = dict(info.get("achievements") or {})
        unlocked = {name for name, count in counts.items() if count > self._counts.get(name, 0)}
        self._counts = counts
        before = self.current
        numbers = _numbers(info) if self.plan.rules else {}
        why = ""
        if self._rule is not None:
            self._rule_spent += 1
            rule = self._rule
            if rule.until.holds(numbers):
                self._rule, why = None, f"rule done ({rule.until})"
            elif self._rule_spent >= rule.budget:
                # It gave up (no water in reach...): the plan gets as many steps before the rule
                # may fire again, or an unreachable need would hold the agent forever.
                self._rule, why = None, f"rule budget ({rule.budget} steps)"
                self._resting[rule] = self._time + rule.budget
        else:
            self._spent += 1
            step = self.plan.steps[self.step_index]
            if step.achievement is not None and step.achievement in unlocked:
                self.completed += 1
                why = f"{step.achievement} unlocked"
                self._advance()
            elif self._spent >= step.budget:
                why = f"budget ({step.budget} steps)"
                self._advance()
        if self._check_rules(numbers):
            why = f"{why}; {self.source}" if why else self.source
        if self.current != before or why:
            self.events.append((self._time, self.current, why))
        return self.current

    def _advance(self) -> None:
        self._spent = 0
        if self.step_index + 1 < len(self.plan.steps):
            self.step_index += 1
        elif self.plan.loop:
            self.step_index = 0
        else:
            self.finished = True  # hold the last instruction for the rest of the episode

    def _check_rules(self, numbers: Mapping[str, Any]) -> bool:
        """Put the first rule that fires in effect: any rule when none is, else only one marked
        ``interrupts`` (the rule it replaces ends; it fires again when its numbers call for it)."""
        for rule in self.plan.rules:
            if self._resting.get(rule, 0) > self._time:
                continue
            if self._rule is not None and (rule is self._rule or not rule.interrupts):
                continue
            if rule.when.holds(numbers) and not rule.until.holds(numbers):
                self._rule, self._rule_spent = rule, 0
                return True
        return False


def _numbers(info: Mapping[str, Any]) -> dict[str, Any]:
    """What the rules read: the status bar's numbers and the frame's daylight (1 when the env
    reports none: a rule on the night never fires in a world without one)."""
    return {**(info.get("inventory") or {}), "daylight": info.get("daylight", 1.0)}


# -- parsing helpers -------------------------------------------------------------------------
def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {_short(value)}"


def _budget(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{where} must be a positive integer (env steps), got {_short(value)}")
    return value


def _task_and_instruction(instruction: Any, task: Any, where: str) -> tuple[str, str]:
    """The instruction text and its task."""
    if task is not None:
        if task not in TASKS:
            raise PlanError(f"{where}: unknown task {_short(task)}; known tasks: {', '.join(sorted(TASKS))}")
        text = TASKS[task].phrasings[0] if instruction is None else instruction
    else:
        text = instruction
        if isinstance(text, str) and text in TASKS:  # a task name stands for its first phrasing
            task, text = text, TASKS[text].phrasings[0]
        elif isinstance(text, str):
            task = task_of_phrasing(text)
            if task is None:
                raise PlanError(
                    f"{where}: {_short(text)} is neither a task name nor one of a task's phrasings, so "
                    "nothing says when it is done: write it as {instruction: ..., task: <task>} "
                    f"(known tasks: {', '.join(sorted(TASKS))})"
                )
    if not isinstance(text, str) or not text.strip():
        raise PlanError(f"{where}: the instruction must be non-empty text, got {_short(text)}")
    return " ".join(text.split()), task


def _budget_for(value: Any, task: str, where: str) -> int:
    """A given budget, else the task's own step limit (what the expert needs, with margin)."""
    return TASKS[task].step_limit if value is None else _budget(value, where)


def _step(entry: Any, budget: int | None, where: str) -> PlanStep:
    if isinstance(entry, str):
        text, task = _task_and_instruction(entry, None, where)
        return PlanStep(text, TASKS[task].achievement, _budget_for(budget, task, f"{where}: budget"))
    if not isinstance(entry, dict):
        raise PlanError(f"{where}: expected an instruction or a mapping, got {_kind(entry)}")
    unknown = sorted(set(entry) - {"instruction", "task", "budget"})
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {unknown}; a step has instruction, task, budget")
    if entry.get("instruction") is None and entry.get("task") is None:
        raise PlanError(f"{where}: give an instruction, a task, or both")
    text, task = _task_and_instruction(entry.get("instruction"), entry.get("task"), where)
    return PlanStep(
        text, TASKS[task].achievement, _budget_for(entry.get("budget", budget), task, f"{where}: budget")
    )


def _rule(entry: Any, budget: int | None, where: str) -> Rule:
    if not isinstance(entry, dict):
        raise PlanError(f"{where}: expected a mapping with when, instruction, until; got {_kind(entry)}")
    unknown = sorted(set(entry) - {"when", "instruction", "task", "until", "budget", "interrupts"})
    if unknown:
        raise PlanError(
            f"{where}: unknown key(s) {unknown}; a rule has when, instruction, task, until, budget, "
            "interrupts"
        )
    interrupts = entry.get("interrupts", False)
    if not isinstance(interrupts, bool):
        raise PlanError(f"{where}: interrupts must be true or false, got {_short(interrupts)}")
    missing = [key for key in ("when", "until") if key not in entry]
    if missing:
        raise PlanError(f"{where}: missing {', '.join(missing)}")
    if entry.get("instruction") is None and entry.get("task") is None:
        raise PlanError(f"{where}: give an instruction, a task, or both")
    # A rule ends on its numbers, not on an unlock: every sip of water counts as collect_drink.
    text, task = _task_and_instruction(entry.get("instruction"), entry.get("task"), where)
    return Rule(
        when=Condition.parse(entry["when"], f"{where}: when"),
        instruction=text,
        until=Condition.parse(entry["until"], f"{where}: until"),
        budget=_budget_for(entry.get("budget", budget), task, f"{where}: budget"),
        task=task,
        interrupts=interrupts,
    )
