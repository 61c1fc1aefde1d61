"""Files that runs and commands leave for people (the resolved config of bc and DAgger, an export
for the hub, the attention viewer) are written whole or not at all, and a full disk is one line
naming the file."""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import envs.data.format
from agent.attention import AttentionRecording, StepAttention, viewer_html
from agent.errors import AgentError, AgentWriteError
from envs.data.collect import collect
from train.cli import main as cli_main
from train.errors import OutputWriteError, TrainError
from train.export_hub import export_hub

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
ENV = "instructcraft/BabyAI-GoToRedBall-v0"
FULL = "No space left on device"


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two BabyAI expert episodes; read-only for the tests."""
    out = tmp_path_factory.mktemp("data") / "demos"
    collect(str(out), ENV, "babyai_bot", 2, seed=0)
    return str(out)


def _full_disk_for(name: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The store's atomic write of ``name`` fails as on a full disk; returns the names it opened."""
    real_open = open
    opened: list[str] = []

    class FullDisk:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, FULL)

    def full_for_name(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(path, mode, *args, **kwargs)
        if Path(path).name.startswith(f".{name}.tmp-"):
            opened.append(Path(path).name)
            return FullDisk(handle)
        return handle

    monkeypatch.setattr(envs.data.format, "open", full_for_name, raising=False)
    return opened


def _one_line(error: str, path: Path, intact: str) -> None:
    lines = error.strip().splitlines()
    assert len(lines) == 1, error
    assert lines[0].startswith(f"error: no space left on device while writing {path}; {intact}. "), error


@pytest.mark.parametrize("command", ["bc", "dagger"])
def test_a_full_disk_on_the_resolved_config_is_one_line_and_leaves_no_part(
    command: str,
    demos: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    argv = [command, "--config", TINY, "--set", "train.steps=1", "--data", demos, "--out", str(out)]
    if command == "dagger":
        argv += ["--env", ENV, "--rounds", "1", "--episodes", "1", "--eval-episodes", "1"]
    opened = _full_disk_for("config.resolved.yaml", monkeypatch)
    code = cli_main(argv)
    error = capsys.readouterr().err
    assert opened, "config.resolved.yaml was not written through the store's atomic write"
    assert code == 2
    _one_line(error, out / "config.resolved.yaml", "nothing was written")
    assert not (out / "config.resolved.yaml").exists()
    assert not [path.name for path in out.rglob("*") if ".tmp-" in path.name]


# -- export hub -----------------------------------------------------------------------------------


def test_a_failed_export_leaves_no_part_of_a_folder_and_names_the_file(
    crafter_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    real_write_text = Path.write_text

    def full_on_readme(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name == "README.md":
            raise OSError(errno.ENOSPC, FULL)
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_on_readme)
    with pytest.raises(OutputWriteError) as caught:
        export_hub(str(crafter_checkpoint), out)
    monkeypatch.undo()
    assert isinstance(caught.value, TrainError)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"no space left on device while writing {out / 'README.md'}; nothing was written"
    )
    # No half-written folder: the same command runs again once there is space.
    assert sorted(path.name for path in tmp_path.iterdir()) == []
    result = export_hub(str(crafter_checkpoint), out)
    assert result["files"] == ["README.md", "config.json", "model.safetensors"]


def test_an_export_is_synced_before_it_is_renamed_into_place(
    crafter_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    out = tmp_path / "export"
    out.mkdir()  # an empty folder is a valid --out, and stays as it was when the export fails

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, FULL)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(
        OutputWriteError, match=f"^no space left on device while writing {re.escape(str(out))}"
    ):
        export_hub(str(crafter_checkpoint), out)
    monkeypatch.undo()
    assert [path.name for path in tmp_path.iterdir()] == ["export"] and not any(out.iterdir())


# -- the attention viewer -------------------------------------------------------------------------


def _recording() -> AttentionRecording:
    rng = np.random.default_rng(0)
    recording = AttentionRecording("go to the red ball", "cross_attention", tokens_per_frame=4, source="test")
    for t in range(2):
        times = np.arange(t + 1)
        weights = rng.random((1, 2, t + 1)).astype(np.float32)
        recording.frames.append(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        recording.steps.append(
            StepAttention(times, weights, times[:2], rng.random((1, 2, min(2, t + 1), 4)).astype(np.float32))
        )
        recording.actions.append("forward")
        recording.probabilities.append(0.5)
        recording.rewards.append(0.0)
    return recording


def test_a_full_disk_leaves_the_previous_viewer_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = viewer_html(_recording(), tmp_path / "viewer.html")
    before = path.read_bytes()
    _full_disk_for("viewer.html", monkeypatch)
    with pytest.raises(AgentWriteError) as caught:
        viewer_html(_recording(), path)
    monkeypatch.undo()
    assert isinstance(caught.value, AgentError)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"no space left on device while writing {path}; viewer.html was left as it was. "
    )
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["viewer.html"]  # no temporary file left
