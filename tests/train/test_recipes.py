"""Recipes are configs: DAgger's settings are the run config's dagger section (the flags override
it, and their defaults are the dataclass's); the demo's recipe is configs/demo.yaml."""

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

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
BABYAI = "instructcraft/BabyAI-GoToRedBall-v0"


def test_the_dagger_flags_are_the_ones_the_resume_command_writes() -> None:
    assert {name: flag for name, (flag, *_) in DAGGER_FLAGS.items()} == FLAGS
    assert {*FLAGS, "eval_seed"} == {field.name for field in dataclasses.fields(DaggerConfig)}


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
