"""DAgger as a careless user or an attacker meets it: the copy of --data takes only the episodes
its index lists and never follows a link; a resumed round reports statistics over all of its
episodes; --resume refuses a different --data; Ctrl-C stops with what finished, exit 130 and a
resume command that works."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import interrupt_when, run_cli

import train.dagger as dagger_module
from envs.data.collect import collect
from envs.data.format import episode_file
from envs.data.store import Dataset, DatasetError
from train.config import ConfigError, load_run_config
from train.dagger import DaggerConfig, run_dagger

ENV = "instructcraft/BabyAI-GoToRedBall-v0"
REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
SMALL = DaggerConfig(rounds=1, episodes=8, beta=0.5, steps=5, eval_episodes=0, workers=1)
RUN = dataclasses.replace(load_run_config(TINY, ["train.steps=5"]), dagger=SMALL)


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four BabyAI expert episodes (seeds 0-3); read-only for the tests."""
    path = tmp_path_factory.mktemp("babyai") / "demos"
    collect(str(path), ENV, "babyai_bot", 4, seed=0)
    return path


@pytest.fixture(scope="module")
def reference(demos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The round-1 summary of an uninterrupted run with SMALL's settings."""
    state = run_dagger(
        RUN, str(demos), str(tmp_path_factory.mktemp("ref") / "run"), ENV, "babyai_bot", progress=False
    )
    return state["rounds"][1]


def copy_of(demos: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "demos"
    shutil.copytree(demos, copy)
    return copy


def dagger_args(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["dagger", "--config", TINY, "--set", "train.steps=5", "--data", str(data), "--env", ENV]
    args += ["--out", str(out), "--rounds", "1", "--episodes", "8", "--beta", "0.5"]
    return [*args, "--steps-per-round", "5", "--eval-episodes", "0", "--workers", "1", *extra]


def rollout_entries(out: Path) -> list[dict[str, Any]]:
    return [e for e in Dataset(out / "data").episodes if "dagger_round" in e.get("extra", {})]


# --data's copy


def test_files_the_index_does_not_list_stay_out_of_the_copy(demos: Path, tmp_path: Path) -> None:
    data = copy_of(demos, tmp_path)
    (data / "episodes" / "passwd.npz").symlink_to("/etc/passwd")
    (data / "episodes" / "zero.npz").symlink_to("/dev/zero")
    (data / "notes.txt").write_text("mine")
    out = tmp_path / "run"
    run_dagger(RUN, str(data), str(out), ENV, "babyai_bot", progress=False)
    written = list((out / "data" / "episodes").rglob("*"))
    copied = sorted(path.relative_to(out / "data").as_posix() for path in written if path.is_file())
    assert copied == [episode_file(number) for number in range(12)]
    assert not (out / "data" / "notes.txt").exists()
    assert all(not path.is_symlink() for path in written)


@pytest.mark.parametrize("target", ["/etc/passwd", "/dev/zero"])
def test_a_listed_episode_that_is_a_link_is_refused_in_one_line(
    demos: Path, tmp_path: Path, target: str
) -> None:
    data = copy_of(demos, tmp_path)
    episode = data / episode_file(1)
    episode.unlink()
    episode.symlink_to(target)
    out = tmp_path / "run"
    result = run_cli(*dagger_args(data, out), check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert f"{episode} (episode 1 of {data}) is a symbolic link" in result.stderr
    copied = (out / "data" / "episodes").rglob("*.npz")
    assert sum(path.stat().st_size for path in copied) < 1_000_000
    assert not (out / "data" / episode_file(1)).exists()


def test_a_linked_episodes_folder_is_refused(demos: Path, tmp_path: Path) -> None:
    data = copy_of(demos, tmp_path)
    (data / "episodes").rename(tmp_path / "elsewhere")
    (data / "episodes").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=r"demos/episodes \(episode 0 of .*\) is a symbolic link"):
        run_dagger(RUN, str(data), str(tmp_path / "run"), ENV, "babyai_bot", progress=False)


# A resumed round's statistics


def test_a_round_killed_in_its_rollouts_reports_all_its_episodes(
    demos: Path, tmp_path: Path, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = dagger_module.rollout_round

    def killed_after_three(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for count, episode in enumerate(real(*args, **kwargs), start=1):
            yield episode
            if count == 3:  # the process dies: three episodes are committed, nothing else runs
                raise SystemExit(137)

    monkeypatch.setattr(dagger_module, "rollout_round", killed_after_three)
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit):
        run_dagger(RUN, str(demos), out, ENV, "babyai_bot", progress=False)
    monkeypatch.setattr(dagger_module, "rollout_round", real)
    assert len(rollout_entries(Path(out))) == 3
    state = run_dagger(RUN, str(demos), out, ENV, "babyai_bot", resume=True, progress=False)
    resumed = state["rounds"][1]
    assert len(rollout_entries(Path(out))) == 8
    for key in ("rollout_success", "learner_step_fraction", "dataset_episodes", "dataset_steps"):
        assert resumed[key] == pytest.approx(reference[key]), key


def test_a_round_killed_in_its_fine_tune_reports_its_rollouts(
    demos: Path, tmp_path: Path, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = dagger_module.train_bc_policy
    calls = {"count": 0}

    def killed_in_round_one(*args: Any, **kwargs: Any) -> Any:
        calls["count"] += 1
        if calls["count"] == 2:  # round 1's fine-tune: its rollouts are all written
            raise SystemExit(137)
        return real(*args, **kwargs)

    monkeypatch.setattr(dagger_module, "train_bc_policy", killed_in_round_one)
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit):
        run_dagger(RUN, str(demos), out, ENV, "babyai_bot", progress=False)
    monkeypatch.setattr(dagger_module, "train_bc_policy", real)
    state = run_dagger(RUN, str(demos), out, ENV, "babyai_bot", resume=True, progress=False)
    assert reference["rollout_success"] > 0
    assert state["rounds"][1]["rollout_success"] == pytest.approx(reference["rollout_success"])
    assert state["rounds"][1]["learner_step_fraction"] == pytest.approx(reference["learner_step_fraction"])


# --resume with other settings


def test_resume_with_another_data_is_refused_naming_it(
    demos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit(137)

    monkeypatch.setattr(dagger_module, "train_bc_policy", killed)
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit):
        run_dagger(RUN, str(demos), out, ENV, "babyai_bot", progress=False)
    other = copy_of(demos, tmp_path)
    with pytest.raises(
        ConfigError, match=rf"started with --data '{re.escape(str(demos))}' \(now '{re.escape(str(other))}'\)"
    ):
        run_dagger(RUN, str(other), out, ENV, "babyai_bot", resume=True, progress=False)
    more = dataclasses.replace(SMALL, episodes=9)
    with pytest.raises(ConfigError, match=r"started with --episodes 8 \(now 9\)"):
        run_dagger(
            dataclasses.replace(RUN, dagger=more),
            str(demos),
            out,
            ENV,
            "babyai_bot",
            resume=True,
            progress=False,
        )
    # The worker count changes no result: a resume may use another.
    monkeypatch.setattr(dagger_module, "train_bc_policy", killed)
    with pytest.raises(SystemExit):
        fewer = dataclasses.replace(SMALL, workers=2)
        run_dagger(
            dataclasses.replace(RUN, dagger=fewer),
            str(demos),
            out,
            ENV,
            "babyai_bot",
            resume=True,
            progress=False,
        )


# Ctrl-C


def resume_from(stderr: str) -> list[str]:
    found = re.search(r"resume with `([^`]+)`", stderr)
    assert found, stderr
    command = shlex.split(found.group(1))
    assert command[:2] == ["instructcraft", "dagger"] and command[-1] == "--resume"
    return command[1:]


@pytest.mark.slow
def test_ctrl_c_in_rollouts_keeps_what_finished_and_the_advice_resumes(demos: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = dagger_args(demos, out)
    args[args.index("--episodes") + 1] = "60"
    code, stderr = interrupt_when(args, re.compile(r"dagger round 1:.*\b([1-9]\d*)/60\b"), signal.SIGINT)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    stopped = re.search(
        r"error: DAgger interrupted in round 1's rollouts \(rounds finished: 0\): (\d+) of 60 rollouts written",
        stderr,
    )
    assert stopped, stderr
    written = int(stopped.group(1))
    assert 1 <= written < 60 and len(rollout_entries(out)) == written
    run_cli(*resume_from(stderr))
    state = json.loads((out / "dagger.json").read_text())
    entries = rollout_entries(out)
    assert sorted(e["seed"] for e in entries) == list(range(4, 64))
    successes = sum(e["success"] for e in entries)
    assert state["rounds"][1]["rollout_success"] == pytest.approx(successes / 60)


@pytest.mark.slow
def test_ctrl_c_in_a_fine_tune_advises_the_dagger_resume_that_works(demos: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = dagger_args(demos, out)
    args[args.index("--steps-per-round") + 1] = "100"
    code, stderr = interrupt_when(args, re.compile(r"\b([1-9]\d*)/100\b"), signal.SIGINT)
    assert code == 130, stderr
    assert "Traceback" not in stderr and "instructcraft bc" not in stderr
    stopped = re.search(
        r"round 1's training \(rounds finished: 0\): checkpoint at step (\d+) written", stderr
    )
    assert stopped, stderr
    step = int(stopped.group(1))
    assert 1 <= step < 100
    resumed = run_cli(*resume_from(stderr))
    state = json.loads((out / "dagger.json").read_text())
    assert [entry["round"] for entry in state["rounds"]] == [0, 1]
    config = json.loads((out / "round_01" / "checkpoint" / "config.json").read_text())
    assert config["trained_steps"] == 100
    # The fine-tune continued from the interrupted step: its progress starts there, not at 0.
    assert f"| {step}/100" in resumed.stderr and "| 0/100" not in resumed.stderr
    assert state["rounds"][1]["rollout_success"] > 0
