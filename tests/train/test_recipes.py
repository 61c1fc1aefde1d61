"""Recipes are configs: DAgger's settings are the run config's dagger section (the flags override
it, and their defaults are the dataclass's); the demo's recipe is configs/demo.yaml (its flags
override it, and their defaults are the recipe's)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import train.dagger as dagger_module
from train.cli import main
from train.cli.training import DAGGER_FLAGS
from train.config import ConfigError, DaggerConfig, load_run_config
from train.dagger_settings import FLAGS
from train.demo import RECIPE, load_recipe
from train.errors import SettingError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
BABYAI = "instructcraft/BabyAI-GoToRedBall-v0"


def test_the_dagger_flags_are_the_ones_the_resume_command_writes() -> None:
    """Every DaggerConfig field has a flag except eval_seed and takeover, set in the run config
    (or by --set), which a resumed run reads back from its config.resolved.yaml."""
    assert {name: flag for name, (flag, *_) in DAGGER_FLAGS.items()} == FLAGS
    assert {*FLAGS, "eval_seed", "takeover"} == {field.name for field in dataclasses.fields(DaggerConfig)}


def test_the_run_config_s_dagger_section_is_read_and_the_flags_given_override_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(TINY.read_text() + "dagger: {rounds: 5, beta: 0.2, eval_seed: 7}\n")
    seen: dict[str, Any] = {}

    def run_dagger(run: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        seen["run"] = run
        return {"rounds": [], "checkpoint": "-"}

    monkeypatch.setattr(dagger_module, "run_dagger", run_dagger)
    where = ["--data", str(tmp_path), "--env", BABYAI, "--out", str(tmp_path / "out")]
    assert main(["dagger", "--config", str(config), *where, "--rounds", "2", "--set", "dagger.steps=9"]) == 0
    assert seen["run"].dagger == DaggerConfig(rounds=2, beta=0.2, eval_seed=7, steps=9)
    assert main(["dagger", *where]) == 0  # no section, no flag: the dataclass's defaults
    assert seen["run"].dagger == DaggerConfig()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{round: 2}", r"unknown key\(s\) \['dagger.round'\]; known keys: \['beta', "),
        ("{rounds: two}", r"dagger.rounds must be an integer, got 'two' \(str\)"),
        ("{beta: 1.5}", r"dagger.beta and dagger.beta_decay must be in \[0, 1\], got 1.5 and 0.5"),
    ],
)
def test_a_wrong_dagger_setting_fails_when_the_config_loads(
    section: str, message: str, tmp_path: Path
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"dagger: {section}\n")
    with pytest.raises(ConfigError, match=message):
        load_run_config(config)


# The demo's recipe


def test_the_demo_recipe_names_every_setting_and_its_run_config_beside_it() -> None:
    recipe = load_recipe()
    assert Path(recipe.run_config) == REPO / "configs" / "bc_crafter.yaml"
    assert recipe.dagger is not None and recipe.dagger.eval_episodes == 0
    assert recipe.training_episodes == recipe.episodes + recipe.dagger.rounds * recipe.dagger.episodes


def test_overrides_replace_recipe_settings_and_zero_rounds_means_no_dagger() -> None:
    recipe = load_recipe(RECIPE, episodes=8, config=TINY, dagger_rounds=0, tasks=["eat_cow"], seed=None)
    assert (recipe.episodes, recipe.run_config, recipe.dagger, recipe.tasks) == (
        8,
        str(TINY),
        None,
        ("eat_cow",),
    )
    assert recipe.seed == load_recipe().seed  # None keeps the recipe's
    assert load_recipe(dagger_steps=3).dagger == dataclasses.replace(load_recipe().dagger, steps=3)
    with pytest.raises(SettingError, match=r"the demo has no setting 'noise'; known: \['bc_steps', "):
        load_recipe(noise=0.5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("episodes:", "epsiodes:"),
            r"demo.yaml: unknown key\(s\) \['epsiodes'\]; known keys: \['bc_steps', ",
        ),
        (("noise: 0.25", "noise: high"), r"demo.yaml: noise must be a number, got 'high' \(str\)"),
        (("  beta: 0.3", "  bta: 0.3"), r"demo.yaml: unknown key\(s\) \['dagger.bta'\]"),
        (("seed: 0 ", "# seed: 0"), r"demo.yaml misses \['seed'\]: a recipe names every setting"),
        (("noise: 0.25", "noise: 1.5"), r"demo.noise must be in \[0, 1\], got 1.5"),
    ],
)
def test_a_wrong_recipe_fails_in_one_line_naming_the_file(
    edit: tuple[str, str], message: str, tmp_path: Path
) -> None:
    text = RECIPE.read_text()
    assert edit[0] in text
    (tmp_path / "demo.yaml").write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError, match=message):
        load_recipe(tmp_path / "demo.yaml")


def test_the_demo_flags_given_override_the_recipe_and_the_others_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import train.demo as demo_module

    seen: dict[str, Any] = {}

    def run_demo(out: str, recipe: Path, **overrides: Any) -> int:
        seen.update(out=out, recipe=recipe, overrides=overrides)
        return 0

    monkeypatch.setattr(demo_module, "run_demo", run_demo)
    assert (
        main(
            ["demo", "--out", str(tmp_path), "--episodes", "8", "--dagger-rounds", "0", "--tasks", "eat_cow"]
        )
        == 0
    )
    assert seen == {
        "out": str(tmp_path),
        "recipe": RECIPE,
        "overrides": {"episodes": 8, "dagger_rounds": 0, "tasks": ["eat_cow"]},
    }
    parser_help = demo_help(capsys)
    recipe = load_recipe()
    assert f"expert episodes to collect (default: {recipe.episodes})" in parser_help
    assert f"(default: {' '.join(recipe.tasks)})" in " ".join(parser_help.split())


def demo_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    return capsys.readouterr().out


def test_the_rl_reward_flag_offers_the_envs_reward_modes() -> None:
    """The CLI names the modes itself (building the parser imports no env); they stay the env's."""
    import argparse

    from envs.crafter_instruct import REWARD_MODES
    from train.cli.training import add_rl_parser

    parser = argparse.ArgumentParser()
    add_rl_parser(parser.add_subparsers())
    (rl,) = parser._subparsers._group_actions[0].choices.values()
    (reward,) = [action for action in rl._actions if action.dest == "reward"]
    assert set(reward.choices) == set(REWARD_MODES)
