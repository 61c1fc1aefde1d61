"""Counts in configs are >= 1 (or >= 0 where 0 means off); rates are finite and in range."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli

from policies import ConfigError
from train.config import load_run_config

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=0", r"train\.steps must be >= 1, got 0"),
        ("train.batch_size=-2", r"train\.batch_size must be >= 1, got -2"),
        ("train.chunk_length=0", r"train\.chunk_length must be >= 1, got 0"),
        ("train.workers=-1", r"train\.workers must be >= 0, got -1"),
        ("train.eval_every=-5", r"train\.eval_every must be >= 0, got -5"),
        ("train.eval_episodes=-5", r"train\.eval_episodes must be >= 0, got -5"),
        ("train.seed=-1", r"train\.seed must be >= 0, got -1"),
        ("train.grad_clip=-1", r"train\.grad_clip must be >= 0, got -1"),
        ("train.gamma=1.5", r"train\.gamma must be in \[0, 1\], got 1\.5"),
        ("train.lr=.nan", r"train\.lr must be a finite number, got nan"),
        ("rl.n_envs=0", r"rl\.n_envs must be >= 1, got 0"),
        ("rl.n_steps=-1", r"rl\.n_steps must be >= 1, got -1"),
        ("rl.bc_batch_size=0", r"rl\.bc_batch_size must be >= 1, got 0"),
        ("rl.seed=-3", r"rl\.seed must be >= 0, got -3"),
        ("rl.gae_lambda=2", r"rl\.gae_lambda must be in \[0, 1\], got 2"),
        ("rl.max_grad_norm=0", r"rl\.max_grad_norm must be > 0, got 0"),
        ("rl.ent_coef=-0.1", r"rl\.ent_coef must be >= 0, got -0\.1"),
        ("rl.kl_decay=0", r"rl\.kl_decay must be in \(0, 1\], got 0"),
    ],
)
def test_counts_and_rates_out_of_range_fail_when_the_config_loads(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(TINY, [override])


def test_zero_means_off_where_documented() -> None:
    run = load_run_config(
        TINY, ["train.workers=0", "train.eval_every=0", "train.grad_clip=0", "rl.kl_coef=0"]
    )
    assert (run.train.workers, run.train.eval_every, run.train.grad_clip, run.rl.kl_coef) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        (["bc", "--data", "nowhere"], "train.eval_episodes=-1", "train.eval_episodes must be >= 0, got -1"),
        (
            ["rl", "--env", "instructcraft/Crafter-Instruct-v0", "--steps", "8"],
            "rl.bc_batch_size=0",
            "rl.bc_batch_size must be >= 1, got 0",
        ),
    ],
)
def test_cli_refuses_a_bad_count_before_doing_anything(
    tmp_path: Path, command: list[str], override: str, message: str
) -> None:
    result = run_cli(
        *command, "--config", TINY, "--set", override, "--out", str(tmp_path / "out"), check=False
    )
    assert result.returncode == 2, result.stderr
    assert f"error: {message}" in result.stderr
    assert not (tmp_path / "out").exists()
