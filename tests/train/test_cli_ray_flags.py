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


@pytest.mark.parametrize("command", ["collect", "eval", "dagger"])
def test_workers_with_a_cluster_address_is_refused_before_anything_runs(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a cluster its CPUs set how many episodes run at once, so `--workers` would be silently
    ignored: it is refused (exit 2) naming the flag and the fix, before Ray is asked for and
    before anything is written."""
    out = tmp_path / "out"
    given = {
        "collect": ["--episodes", "1", "--out", str(out)],
        "eval": ["--checkpoint", str(tmp_path / "none"), "--episodes", "1", "--out", str(out)],
        "dagger": ["--data", str(tmp_path / "none"), "--out", str(out)],
    }[command]
    argv = [command, "--env", CRAFTER, *given, "--ray-address", "127.0.0.1:9", "--workers", "3"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert "--workers 3" in err and "--ray-address" in err and "leave --workers out" in err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(("extra", "cpus"), [(["--workers", "3"], 3), ([], "cores"), (["--workers", "2"], 2)])
def test_workers_sizes_the_local_ray(
    extra: list[str], cpus: int | str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--ray --workers N` starts the local Ray with N CPUs, as the pool would run N processes
    (a 2 typed by hand counts, though it equals the default); without `--workers` Ray gets
    every usable core."""
    import contextlib

    import envs.ray_rollouts
    from envs.workers import usable_cores

    asked: list[tuple[str | None, int | None]] = []

    @contextlib.contextmanager
    def recording(address: str | None = None, num_cpus: int | None = None):  # type: ignore[no-untyped-def]
        asked.append((address, num_cpus))
        raise KeyboardInterrupt  # stop before any episode: only the request matters here
        yield

    monkeypatch.setattr(envs.ray_rollouts, "ray_rollouts", recording)
    argv = ["collect", "--env", CRAFTER, "--episodes", "1", "--out", str(tmp_path / "d"), "--ray", *extra]
    main(argv)
    assert asked == [(None, usable_cores() if cpus == "cores" else cpus)]
