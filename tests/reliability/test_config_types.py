"""Config values of the wrong type fail when the config loads, naming field, type and value."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli

from policies import ConfigError, PolicyConfig
from train.config import load_run_config

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=2.5", r"train\.steps must be an integer, got 2\.5 \(float\)"),
        ("train.steps=true", r"train\.steps must be an integer, got True \(bool\)"),
        ("train.batch_size=four", r"train\.batch_size must be an integer, got 'four' \(str\)"),
        ("train.lr=fast", r"train\.lr must be a number, got 'fast' \(str\)"),
        ("train.lr=true", r"train\.lr must be a number, got True \(bool\)"),
        ("train.amp=1", r"train\.amp must be a boolean \(true/false\), got 1 \(int\)"),
        ("train.device=1", r"train\.device must be a string, got 1 \(int\)"),
        ("rl.n_envs=2.0", r"rl\.n_envs must be an integer, got 2\.0 \(float\)"),
        ("policy.fusion_kwargs.num_heads=2.0", r"policy\.fusion_kwargs\.num_heads must be an integer"),
        ("policy.vision.channels=[8, 16.5]", r"policy\.vision\.channels\[1\] must be an integer, got 16\.5"),
        (
            "policy.vision.image_size=[64]",
            r"policy\.vision\.image_size must be a list of 2 values, got \[64\]",
        ),
        ("policy.text.path=[1]", r"policy\.text\.path must be a string or null, got \[1\] \(list\)"),
        ("policy.fusion_kwargs=3", r"policy\.fusion_kwargs must be a mapping, got int"),
    ],
)
def test_wrong_types_fail_when_the_config_loads(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(TINY, [override])


def test_right_types_still_load() -> None:
    run = load_run_config(
        TINY,
        ["train.lr=1", "train.steps=1e3", "policy.fusion_kwargs.mlp_ratio=2", "policy.text.path=null"],
    )
    assert run.train.lr == 1.0 and isinstance(run.train.lr, float)
    assert run.train.steps == 1000 and isinstance(run.train.steps, int)
    assert run.policy.fusion_kwargs.mlp_ratio == 2.0
    assert run.policy.vision.channels == (8, 16, 16)


def test_yaml_float_for_an_int_field_fails(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("policy:\n  fusion_kwargs: {num_heads: 2.0}\n")
    with pytest.raises(ConfigError, match=r"policy\.fusion_kwargs\.num_heads must be an integer, got 2\.0"):
        load_run_config(tmp_path / "c.yaml")


def test_policy_json_with_a_wrong_type_is_refused() -> None:
    data = PolicyConfig().to_dict()
    data["fusion_kwargs"]["gated"] = "yes"
    with pytest.raises(
        ConfigError, match=r"fusion_kwargs\.gated must be a boolean \(true/false\), got 'yes'"
    ):
        PolicyConfig.from_dict(data)


@pytest.mark.parametrize("value", ["2.5", "true"])
def test_bc_cli_refuses_a_non_integer_step_count(tmp_path: Path, value: str) -> None:
    result = run_cli(
        "bc",
        "--config",
        TINY,
        "--set",
        f"train.steps={value}",
        "--data",
        str(tmp_path / "no-data"),
        "--out",
        str(tmp_path / "out"),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "error: train.steps must be an integer, got" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
