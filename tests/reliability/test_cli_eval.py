"""eval and ablate check the checkpoint, the env id and the action space in the parent, before
any worker starts or any training runs: mistakes fail in seconds with one line and exit 2."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import SCRIPT

import envs

BABYAI = "instructcraft/BabyAI-GoToLocal-v0"


def run_quick(*args: str, limit: float = 120) -> subprocess.CompletedProcess[str]:
    """The console script; a hang (a pool respawning failing workers) fails the test."""
    start = time.perf_counter()
    result = subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=limit)
    result.seconds = time.perf_counter() - start  # type: ignore[attr-defined]
    return result


def eval_args(checkpoint: Path | str, env: str = envs.CRAFTER_ID, *extra: str) -> list[str]:
    return [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--env",
        env,
        "--episodes",
        "2",
        "--workers",
        "2",
        *extra,
    ]


def broken_checkpoint(kind: str, good: Path, tmp_path: Path) -> Path:
    if kind == "missing":
        return tmp_path / "nope"
    copy = Path(shutil.copytree(good, tmp_path / kind))
    if kind == "pickle":
        (copy / "model.safetensors").rename(copy / "model.pt")
    else:  # corrupt safetensors
        (copy / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    return copy


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "model.safetensors is missing"),
        ("pickle", "pickle-based weights"),
        ("corrupt", "is not a safetensors file"),
    ],
)
def test_eval_with_an_unloadable_checkpoint_fails_at_once(
    kind: str, message: str, crafter_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = broken_checkpoint(kind, crafter_checkpoint, tmp_path)
    result = run_quick(*eval_args(checkpoint))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert str(checkpoint) in result.stderr


def test_eval_with_a_mistyped_env_fails_at_once(crafter_checkpoint: Path) -> None:
    result = run_quick(*eval_args(crafter_checkpoint, "instructcraft/Crafter-Instruct-v9"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "unknown env id 'instructcraft/Crafter-Instruct-v9'" in result.stderr
    assert "did you mean instructcraft/Crafter-Instruct-v0" in result.stderr
    # the same one-line message as collect gives for the same typo
    collect = run_quick(
        "collect", "--env", "instructcraft/Crafter-Instruct-v9", "--episodes", "1", "--out", "x"
    )
    assert collect.returncode == 2 and collect.stderr.strip().splitlines()[-1] == result.stderr.strip()


@pytest.mark.parametrize("flags", [["--greedy"], []])
def test_eval_refuses_a_checkpoint_for_another_action_space(
    flags: list[str], crafter_checkpoint: Path
) -> None:
    result = run_quick(*eval_args(crafter_checkpoint, BABYAI, *flags))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "trained for action space {'type': 'Discrete', 'n': 17} but the env has" in result.stderr
    assert "success" not in result.stdout  # no result table


def test_a_worker_that_dies_ends_the_run() -> None:
    from envs.workers import WorkerError, ordered_map

    with pytest.raises(WorkerError, match="worker process failed to start or died"):
        list(ordered_map(abs, [1, 2, 3], 2, _exit_at_once, (), "test"))


def _exit_at_once() -> None:
    import os

    os._exit(3)


def test_ablate_refuses_an_eval_env_the_data_cannot_act_in(crafter_demos: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    result = run_quick(
        "ablate", "--fusion", "gmu", "--data", str(crafter_demos), "--out", str(out), "--env", BABYAI
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "action_space" in result.stderr and BABYAI in result.stderr
    assert not out.exists()  # refused before any training
