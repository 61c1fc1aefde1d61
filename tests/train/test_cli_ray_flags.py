"""`--ray` / `--ray-address` on the command line, where Ray need not be installed: without it the
flag says how to install it before anything is written, and the two flags exclude each other."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from train.cli import main

CRAFTER = "instructcraft/Crafter-Instruct-v0"


def test_without_ray_the_flag_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["collect", "--env", CRAFTER, "--episodes", "1", "--out", str(tmp_path / "d"), "--ray"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install -e '.[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "episodes").exists()


@pytest.mark.parametrize("command", ["collect", "eval", "dagger"])
def test_ray_and_ray_address_together_are_refused(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--env", CRAFTER, "--ray", "--ray-address", "auto"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
