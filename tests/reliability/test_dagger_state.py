"""DAgger's state file (dagger.json) that cannot be read is an expected error naming the file and
the fix, printed as one line by the command line; never a traceback."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from train.cli import main as cli_main
from train.dagger_settings import STATE, load_state, save_state
from train.errors import SettingError, TrainError

FIX = "start a new run in another --out"


def _bad_utf8(path: Path) -> None:
    path.write_bytes(b'{"dagger": {"rounds": 2}, "note": "\xff\xfe"}')


def _broken_json(path: Path) -> None:
    path.write_text('{"dagger": {"rounds": 2')


def _a_list(path: Path) -> None:
    path.write_text("[1, 2]")


def _no_settings(path: Path) -> None:
    path.write_text('{"rounds": []}')


def _a_folder(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("spoil", [_bad_utf8, _broken_json, _a_list, _no_settings, _a_folder])
def test_a_state_file_that_cannot_be_read_names_itself_and_the_fix(tmp_path: Path, spoil) -> None:  # type: ignore[no-untyped-def]
    spoil(tmp_path / STATE)
    with pytest.raises(SettingError) as caught:
        load_state(tmp_path)
    assert isinstance(caught.value, TrainError)
    message = str(caught.value)
    assert str(tmp_path / STATE) in message and FIX in message and "\n" not in message


def test_a_state_file_without_read_permission_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_state(tmp_path, {"dagger": {"rounds": 2}, "rounds": []})

    def denied(self: Path, *args: object, **kwargs: object) -> str:  # what chmod 0 gives a non-root user
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(SettingError, match=r"cannot read .*Permission denied.*make it readable to resume"):
        load_state(tmp_path)


def test_a_state_file_reads_back_as_written(tmp_path: Path) -> None:
    assert load_state(tmp_path) == {}
    state = {"dagger": {"rounds": 2}, "rounds": [{"round": 0, "success": 0.5}], "note": "é"}
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state


def test_resuming_from_an_undecodable_state_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    _bad_utf8(out / STATE)
    argv = ["dagger", "--data", str(tmp_path / "demos"), "--env", "instructcraft/BabyAI-GoToRedBall-v0"]
    code = cli_main([*argv, "--out", str(out), "--resume"])
    error = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in error
    lines = error.strip().splitlines()
    assert len(lines) == 1 and str(out / STATE) in lines[0] and FIX in lines[0], error
