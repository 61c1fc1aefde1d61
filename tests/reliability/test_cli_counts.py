"""Counts given on the command line (episodes, steps, workers, sizes) are refused at parse time
when zero or negative: nothing runs, nothing is written, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli

from train.cli import build_parser

CRAFTER = "instructcraft/Crafter-Instruct-v0"
BASE = {
    "collect": ["collect", "--env", CRAFTER, "--out", "o", "--episodes", "1"],
    "eval": ["eval", "--checkpoint", "c", "--env", CRAFTER],
    "rollout": ["rollout", "--checkpoint", "c", "--env", CRAFTER, "--out", "o"],
    "rl": ["rl", "--env", CRAFTER, "--out", "o", "--steps", "8"],
    "ablate": ["ablate", "--fusion", "gmu", "--data", "d", "--out", "o"],
    "attention": ["attention", "--checkpoint", "c", "--out", "o"],
    "demo": ["demo"],
    "import": ["import", "vpt", "p", "--out", "o"],
}
BAD = [
    ("collect", "--episodes", "0"),
    ("collect", "--episodes", "-5"),
    ("collect", "--workers", "0"),
    ("collect", "--seed", "-1"),
    ("eval", "--episodes", "0"),
    ("eval", "--episodes", "-5"),
    ("eval", "--workers", "0"),
    ("eval", "--videos", "-1"),
    ("rollout", "--episodes", "0"),
    ("rl", "--steps", "0"),
    ("ablate", "--episodes", "0"),
    ("ablate", "--workers", "-2"),
    ("ablate", "--rl-steps", "-1"),
    ("attention", "--max-steps", "0"),
    ("demo", "--episodes", "0"),
    ("demo", "--bc-steps", "0"),
    ("demo", "--eval-episodes", "0"),
    ("demo", "--dagger-episodes", "0"),
    ("demo", "--dagger-steps", "0"),
    ("demo", "--dagger-rounds", "-1"),
    ("demo", "--workers", "0"),
    ("import", "--camera-bins", "0"),
]


@pytest.mark.parametrize(("command", "flag", "value"), BAD)
def test_a_count_below_its_minimum_is_refused_by_the_parser(
    command: str, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*BASE[command], flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be a whole number >= " in capsys.readouterr().err


def test_the_console_script_refuses_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "demos"
    result = run_cli("collect", "--env", CRAFTER, "--episodes", "-5", "--out", str(out), check=False)
    assert result.returncode == 2 and "--episodes: must be a whole number >= 1, got -5" in result.stderr
    assert not out.exists()


def test_demo_refuses_training_seeds_that_overlap_its_evaluation_seeds(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", str(out), "--seed", "98000", check=False)
    assert result.returncode == 2
    assert "training episodes use seeds 98000..101599, which overlap the evaluation seeds 100000..100079" in (
        result.stderr
    )
    assert not out.exists()
