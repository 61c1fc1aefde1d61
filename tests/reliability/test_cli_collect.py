"""collect appends new seeds, never takes over a folder that is not a dataset, and a full disk
ends it with one line, no temporaries, and every earlier episode intact."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from helpers import run_cli

import envs
import envs.data.format
from envs.data.store import Dataset
from train.cli import main

COLLECT = ["collect", "--env", envs.CRAFTER_ID, "--tasks", "collect_wood", "--workers", "1"]


def test_appending_continues_after_the_highest_recorded_seed(tmp_path: Path) -> None:
    out = str(tmp_path / "demos")
    first = run_cli(*COLLECT, "--episodes", "2", "--out", out)
    assert "seeds 0..1" in first.stderr
    second = run_cli(*COLLECT, "--episodes", "2", "--out", out)
    assert "seeds 2..3 (continuing after the highest recorded seed 1" in second.stderr
    assert "seeds 2..3" in second.stdout
    dataset = Dataset(out)
    assert [entry["seed"] for entry in dataset.episodes] == [0, 1, 2, 3]
    assert len({entry["sha256"] for entry in dataset.episodes}) == 4
    # An explicit --seed is honoured and the repetition named.
    third = run_cli(*COLLECT, "--episodes", "1", "--seed", "3", "--out", out)
    assert "1 of them are already recorded" in third.stderr


def test_the_summary_counts_the_steps_it_wrote_not_those_it_dropped(tmp_path: Path) -> None:
    """With --only-success, failed episodes are run but not written: "wrote N episodes (S steps)"
    names the dataset's own steps (it once added the dropped episodes' steps)."""
    out = str(tmp_path / "demos")
    # Noise 0.9: nine actions in ten are random, so some episodes fail and are dropped.
    result = run_cli(*COLLECT, "--noise", "0.9", "--episodes", "6", "--only-success", "--out", out)
    summary = Dataset(out).summary()
    stats = result.stdout
    assert "expert success 1.000" not in stats, "every episode succeeded: nothing was dropped"
    assert f"wrote {summary['episodes']} episodes ({summary['steps']} steps," in result.stdout


def test_collect_refuses_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    (out / "episodes").mkdir(parents=True)
    (out / "notes.md").write_text("mine")
    (out / "episodes" / "keep.txt").write_text("mine too")
    result = run_cli(*COLLECT, "--episodes", "1", "--out", str(out), check=False)
    assert result.returncode == 2
    assert (
        f"{out} is not empty and is not an instructcraft dataset (it holds notes.md, episodes/keep.txt)"
        in (result.stderr)
    )
    assert "write to a new or empty folder" in result.stderr
    assert sorted(p.name for p in out.rglob("*")) == ["episodes", "keep.txt", "notes.md"]


def test_collect_into_an_empty_folder_works(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    run_cli(*COLLECT, "--episodes", "1", "--out", str(tmp_path / "empty"))
    assert len(Dataset(tmp_path / "empty")) == 1


def test_a_full_disk_ends_collect_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demos"
    real_open = open
    writes = {"episodes": 0}

    class FullDisk:
        def __init__(self, handle):  # type: ignore[no-untyped-def]
            self.handle = handle

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.handle, name)

    def full_after_two(path, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        handle = real_open(path, mode, *args, **kwargs)
        if ".npz.tmp-" in str(path):
            writes["episodes"] += 1
            if writes["episodes"] > 2:
                return FullDisk(handle)
        return handle

    monkeypatch.setattr(envs.data.format, "open", full_after_two, raising=False)
    code = main([*COLLECT, "--episodes", "4", "--out", str(out)])
    error = capsys.readouterr().err
    assert code != 0
    assert "no space left on device" in error and "while writing" in error and "000002.npz" in error
    assert "the 2 earlier episodes" in error and "are intact" in error
    assert not [p.name for p in (out / "episodes").rglob("*") if ".tmp-" in p.name]
    monkeypatch.undo()
    assert len(Dataset(out)) == 2 and Dataset(out).check() == []
    info = json.loads(run_cli("data", "info", str(out), "--json").stdout)
    assert info["episodes"] == 2
