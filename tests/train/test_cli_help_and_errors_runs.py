"""The error paths a newcomer meets, each one line that names the thing and the fix: Ctrl-C in
collect, eval and rollout keeps what finished and exits 130; a mistyped --expert, an episode
number past the dataset's end, a MineRL id without MineRL, a negative guidance scale and a run
folder given as a checkpoint are refused before anything runs. And what a user looks at: the
demo's captioned video and the ablation chart. In-process where it can be (tiny budgets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_interrupted_collect_kept, make_tiny_config
from PIL import Image

import envs
import envs.data.collect as collect_module
from envs.data.store import Dataset
from policies import InstructionPolicy
from train.cli import build_parser, main

COLLECT = ["collect", "--env", envs.CRAFTER_ID, "--tasks", "collect_wood"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 17-action policy for 64x64 frames inside a run folder (RUN/checkpoint)."""
    config = make_tiny_config().replace(
        **{"vision.image_size": [64, 64], "vision.channels": [8, 16, 16], "fusion_kwargs.max_history": 8}
    )
    torch.manual_seed(0)
    return InstructionPolicy(config).save_pretrained(tmp_path_factory.mktemp("run") / "checkpoint")


@pytest.fixture(scope="module")
def two_episodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "demos"
    collect_module.collect(str(out), envs.CRAFTER_ID, "crafter_planner", 2, tasks=["collect_wood"])
    return out


# Ctrl-C


def test_ctrl_c_in_collect_keeps_the_written_episodes_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demos"
    real = collect_module._episode
    calls = {"n": 0}

    def stop_at_the_third(worker: Any, job: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(worker, job)

    monkeypatch.setattr(collect_module, "_episode", stop_at_the_third)
    code = main([*COLLECT, "--workers", "1", "--episodes", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130
    assert f"interrupted: kept the 2 episode(s) written before Ctrl-C (2 in {out}, a valid dataset)" in err
    assert "run collect again without --seed to continue" in err
    dataset = Dataset(out)
    assert len(dataset) == 2 and dataset.check() == []
    assert [entry["seed"] for entry in dataset.episodes] == [0, 1]


@pytest.mark.slow
def test_ctrl_c_to_collect_and_its_workers_prints_no_traceback(tmp_path: Path) -> None:
    """The terminal's Ctrl-C reaches the whole process group: the parent and its workers."""
    assert_interrupted_collect_kept([*COLLECT, "--workers", "2"], tmp_path / "demos", 200)


def test_ctrl_c_in_eval_keeps_the_finished_episodes_in_out(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """eval --out: an interrupted run writes eval.json and stats.jsonl over its finished episodes."""
    import agent.evaluate as evaluation

    real = evaluation.evaluate

    def interrupted_after_two(*args: Any, progress: Any = None, **kwargs: Any) -> dict[str, Any]:
        rows: list[Any] = []

        def count(row: dict[str, Any]) -> None:
            rows.append(row)
            progress(row)
            if len(rows) == 2:
                raise KeyboardInterrupt

        return real(*args, progress=count, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", interrupted_after_two)
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(checkpoint), "--env", envs.CRAFTER_ID, "--tasks", "collect_wood"]
    code = main([*argv, "--episodes", "4", "--workers", "1", "--out", str(out)])
    assert code == 130
    assert "error: interrupted after 2 of 4 episodes" in capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert report["interrupted"] is True and (report["finished"], report["planned"]) == (2, 4)
    assert report["runs"][0]["episodes"] == 2
    assert len((out / "stats.jsonl").read_text().splitlines()) == 2


def test_ctrl_c_in_rollout_keeps_the_finished_videos_and_stats(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import agent.rollout as rollouts

    real = rollouts.rollout_episode
    calls = {"n": 0}

    def stop_in_the_second(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rollouts, "rollout_episode", stop_in_the_second)
    out = tmp_path / "rollouts"
    argv = ["rollout", "--checkpoint", str(checkpoint), "--env", envs.CRAFTER_ID, "--task", "collect_wood"]
    code = main([*argv, "--episodes", "3", "--out", str(out)])
    assert code == 130
    assert f"interrupted after 1 of 3 episodes: their videos and stats.json are in {out}" in (
        capsys.readouterr().err
    )
    stats = json.loads((out / "stats.json").read_text())
    assert stats["interrupted"] is True and stats["planned"] == 3 and len(stats["episodes"]) == 1
    assert (out / "episode_000.mp4").stat().st_size > 0 and not (out / "episode_001.mp4").exists()


def test_ctrl_c_in_any_other_command_is_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import train.cli.misc as misc

    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(misc, "run_envs", interrupted)
    assert main(["envs"]) == 130
    assert capsys.readouterr().err == "interrupted: envs stopped before it finished\n"


# Mistakes refused before anything runs


def test_a_mistyped_expert_is_refused_before_the_dataset_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demos"
    code = main([*COLLECT, "--expert", "crafter_planer", "--episodes", "2", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "error: unknown --expert 'crafter_planer': the experts are babyai_bot, crafter_night_planner, crafter_planner"
        in err
    )
    assert "Traceback" not in err and not out.exists()


def test_attention_names_the_dataset_s_episode_count(
    two_episodes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before the checkpoint loads: the checkpoint here does not even exist."""
    argv = ["attention", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")]
    code = main([*argv, "--from-dataset", str(two_episodes), "--episode", "99"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"error: {two_episodes} has 2 episode(s) (numbered 0..1): there is no episode 99" in err
    assert "list index out of range" not in err


MINERL_IDS = ["instructcraft/MineRL-Treechop-v0", "MineRLTreechop-v0", "instructcraft/MineRL-Treechp-v0"]


@pytest.mark.skipif(envs.minerl_available(), reason="MineRL is installed here: its ids are registered")
@pytest.mark.parametrize("env_id", MINERL_IDS)
@pytest.mark.parametrize("command", ["collect", "rollout"])
def test_a_minerl_id_without_minerl_says_how_to_install_it(
    env_id: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {
        "collect": ["collect", "--episodes", "1", "--out", str(tmp_path / "d")],
        "rollout": ["rollout", "--checkpoint", str(tmp_path / "c"), "--out", str(tmp_path / "r")],
    }[command]
    assert main([*argv, "--env", env_id]) == 2
    err = capsys.readouterr().err
    assert f"error: {env_id} is a MineRL env" in err and "MineRL is not installed" in err
    assert "pip install -e '.[minerl]'" in err and "Java 8" in err
    assert "BabyAI" not in err and "did you mean" not in err
    if env_id != MINERL_IDS[0]:
        assert "(the instructcraft id is instructcraft/MineRL-Treechop-v0)" in err


@pytest.mark.parametrize("command", ["eval", "rollout"])
@pytest.mark.parametrize("value", ["-3", "nan", "inf"])
def test_a_negative_guidance_scale_is_refused(
    command: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        command,
        "--checkpoint",
        "c",
        "--env",
        envs.CRAFTER_ID,
        *(["--out", "o"] * (command == "rollout")),
    ]
    build_parser().parse_args([*argv, "--cfg-scale", "1.5"])  # a valid scale parses
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, f"--cfg-scale={value}"])
    assert exit_info.value.code == 2
    assert f"argument --cfg-scale: must be a number >= 0, got {value}" in capsys.readouterr().err


def test_a_run_folder_given_as_a_checkpoint_points_at_the_checkpoint_inside(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = checkpoint.parent
    argv = ["rollout", "--checkpoint", str(run), "--env", envs.CRAFTER_ID, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run} is not a checkpoint (it looks like a run folder): pass {checkpoint}" in err
    # A folder without a checkpoint inside gets no such hint.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match=r"is not a checkpoint$"):
        InstructionPolicy.from_pretrained(empty)


# What a user looks at


def test_the_demo_video_is_captioned_like_rollout_videos(checkpoint: Path, tmp_path: Path) -> None:
    import imageio.v3 as iio

    from agent.rollout import CAPTION_HEIGHT
    from train.demo import _record_video

    [mp4] = _record_video(str(checkpoint), "collect_wood", tmp_path / "videos", seed=100_000)
    first = iio.imread(Path(mp4).with_suffix(".gif"), index=0)[..., :3]
    assert first.shape == (4 * 64 + CAPTION_HEIGHT, 4 * 64, 3)
    bar = first[4 * 64 :]
    assert (bar > 128).any(), "the caption bar holds no text"
    stats = json.loads((tmp_path / "videos" / "stats.json").read_text())
    assert stats["episodes"][0]["task"] == "collect_wood" and stats["episodes"][0]["seed"] == 100_000


def test_the_ablation_chart_shows_zero_bars_and_keeps_its_legend(tmp_path: Path) -> None:
    from train.ablate import BAR_COLORS, ZERO_BAR, bar_chart

    row = {"fusion": "cross_attention", "correct": 0.0, "sensitivity": 0.0, "act_ms": 2.0}
    bar_chart([row], tmp_path / "ablation.png")
    pixels = np.asarray(Image.open(tmp_path / "ablation.png").convert("RGB"))
    height, width, _ = pixels.shape
    drawn = np.argwhere((pixels != 255).any(axis=2))
    # Nothing runs into the edge: the legend and the labels are inside the image.
    assert drawn[:, 1].max() < width - 8 and drawn[:, 0].max() < height - 4
    for key in ("correct", "sensitivity"):
        # Below the legend: the stub of a zero bar, ZERO_BAR rows on the axis, its outline inside.
        lower = pixels[height // 2 :]
        rows_with_color = np.unique(np.argwhere((lower == BAR_COLORS[key]).all(axis=2))[:, 0])
        assert len(rows_with_color) >= ZERO_BAR - 2, key
