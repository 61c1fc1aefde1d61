"""Result files are written whole or not at all, and a full disk is judged by one rule."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from policies.files import is_disk_full
from train.errors import OutputWriteError, TrainError
from train.report import write_json


def _nearly_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))


def test_an_errno_decides_whether_the_disk_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nearly_full(monkeypatch)
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    # a permission error on a nearly full disk is a permission error, as the dataset store says
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied"), tmp_path)
    # torch.save's failed write carries no errno: the free space decides
    assert is_disk_full(RuntimeError("PytorchStreamWriter failed writing file: file write failed"), tmp_path)
    monkeypatch.undo()
    assert not is_disk_full(RuntimeError("file write failed"), tmp_path)


def test_a_full_disk_leaves_the_previous_summary_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "summary.json"
    write_json(path, {"step": 1})
    before = path.read_bytes()

    import os

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputWriteError) as caught:
        write_json(path, {"step": 2})
    monkeypatch.undo()
    assert isinstance(caught.value, TrainError)
    assert str(caught.value).startswith("no space left on ")
    assert str(path) in str(caught.value) and "left as it was" in str(caught.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left


def test_write_json_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json(path, {"loss": float("nan"), "step": 3})
    assert path.read_text() == '{\n  "loss": null,\n  "step": 3\n}'
