"""What ``--help`` tells a newcomer: every flag's default, a help line for every flag, and one
parser per sub-action of ``data`` and ``import`` (its own help, the others' flags refused).
All in-process through ``build_parser`` / ``main``: nothing runs."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from train.cli import build_parser, main


def all_parsers(
    parser: argparse.ArgumentParser, name: str = "instructcraft"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub_parser in action.choices.items():
                yield from all_parsers(sub_parser, f"{name} {sub_name}")


def flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return flat(capsys.readouterr().out)


PARSERS = dict(all_parsers(build_parser()))


@pytest.mark.parametrize("name", list(PARSERS))
def test_every_argument_has_help_and_every_default_is_shown(name: str) -> None:
    """A default worth showing (not None, off or empty) is in the flag's help line, added by the
    formatter or written in the help itself."""
    parser = PARSERS[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        default = action.default
        if not action.option_strings or default is None or default is False or default == []:
            continue
        value = " ".join(map(str, default)) if isinstance(default, list) else str(default)
        line = formatter._expand_help(action)
        assert f"(default: {value})" in line or "(default: " in action.help, (
            f"{name} --help does not show {action.option_strings[-1]}'s default {value}: {line!r}"
        )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dagger"], ["per round (default: 200)", "(default: 40)", "in round 1 (default: 0.5)"]),
        (["eval"], ["episodes per instruction mode (default: 50)", "(default: correct)"]),
        (["ablate"], ["eval episodes per instruction mode (default: 20)"]),
        (["collect"], ["worker processes (default: 2)", "(default: 0.0)"]),
        (["import", "vpt"], ["frame size (default: 64 64)", "(default: play minecraft)"]),
    ],
)
def test_help_names_the_defaults_a_run_uses(
    argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(argv, capsys)
    for phrase in expected:
        assert phrase in text


def test_eval_instruction_mode_says_what_each_mode_gives_the_agent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_of(["eval"], capsys)
    assert "another task's (swapped)" in text and "learned null instruction (blank)" in text


@pytest.mark.parametrize(
    ("argv", "own", "foreign"),
    [
        (["data", "info"], "--json", "--replay"),
        (["data", "check"], "--replay", "--json"),
        (["import", "minerl"], "--allow-pickle", "--size"),
        (["import", "vpt"], "--size", "--allow-pickle"),
        (["import", "minari"], "--instruction", "--camera-bins"),
    ],
)
def test_each_sub_action_has_its_own_help(
    argv: list[str], own: str, foreign: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(argv, capsys)
    assert text.startswith(f"usage: instructcraft {' '.join(argv)} ")
    assert own in text and foreign not in text


@pytest.mark.parametrize(
    ("argv", "foreign"),
    [
        (["data", "info", "d"], ["--replay"]),
        (["data", "check", "d"], ["--json"]),
        (["import", "minari", "some/id-v0", "--out", "o"], ["--camera-bins", "11"]),
        (["import", "minari", "some/id-v0", "--out", "o"], ["--allow-pickle"]),
        (["import", "vpt", "dir", "--out", "o"], ["--env", "MineRLTreechop-v0"]),
        (["import", "minerl", "root", "--out", "o"], ["--size", "32", "32"]),
        (["import", "minerl", "root", "--out", "o"], ["--instruction", "chop"]),
    ],
)
def test_a_flag_of_another_sub_action_is_refused(
    argv: list[str], foreign: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    build_parser().parse_args(argv)  # valid without the foreign flag
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, *foreign])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {' '.join(foreign)}" in capsys.readouterr().err


def test_the_sub_actions_parse_their_own_flags() -> None:
    parser = build_parser()
    info = parser.parse_args(["data", "info", "d", "--json"])
    assert (info.action, info.path, info.json, info.func.__name__) == ("info", "d", True, "run_data")
    check = parser.parse_args(["data", "check", "d", "--replay"])
    assert (check.action, check.replay) == ("check", True)
    vpt = parser.parse_args(["import", "vpt", "dir", "--out", "o", "--size", "32", "48"])
    assert (vpt.source, vpt.size, vpt.camera_bins, vpt.instruction) == ("vpt", [32, 48], 11, "play minecraft")
    minari = parser.parse_args(["import", "minari", "some/id-v0", "--out", "o"])
    assert (minari.source, minari.instruction, minari.func.__name__) == ("minari", None, "run_import")


def test_greedy_or_sampled_is_said_in_each_command_that_acts(capsys: pytest.CaptureFixture[str]) -> None:
    assert "sampled from the policy (seeded per episode) unless --greedy" in help_of(["eval"], capsys)
    assert "most likely action (greedy) unless --sample" in help_of(["rollout"], capsys)
    assert "most likely action at every step (greedy, unlike eval, which samples)" in help_of(
        ["attention"], capsys
    )
