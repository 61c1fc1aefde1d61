"""`instructcraft data merge` / ``merge_datasets``: datasets collected separately become one, every
episode intact, the inputs untouched; mismatched datasets, repeated seeds and unsafe outputs are
refused before anything is written; Ctrl-C keeps whole episodes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import run_cli

import envs
from envs.data.collect import collect
from envs.data.merge import merge_datasets
from envs.data.store import Dataset, DatasetError, DatasetWriter, Episode, episode_file
from train.cli import main

SPACE = {"type": "Discrete", "n": 7}
BABYAI_ID = envs.babyai_id("GoToRedBall")


# -- helpers ---------------------------------------------------------------------------------


def folder_digest(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under ``root`` (hidden ones too): relative path -> (mode, mtime, content hash)."""
    digest = {}
    for path in sorted(root.rglob("*")):
        status = path.lstat()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        digest[path.relative_to(root).as_posix()] = (status.st_mode, status.st_mtime_ns, content)
    return digest


def fake_episode(seed: int | None, steps: int = 5, image_shape: tuple[int, int, int] = (8, 8, 3)) -> Episode:
    rng = np.random.default_rng(seed if seed is not None else 999)
    return Episode(
        images=rng.integers(0, 256, (steps + 1, *image_shape), dtype=np.uint8),
        actions=rng.integers(0, 7, steps),
        rewards=rng.random(steps).astype(np.float32),
        terminated=np.arange(steps) == steps - 1,
        truncated=np.zeros(steps, bool),
        instruction=f"go to the ball {seed}",
        task="go_to",
        env_id="test-env",
        expert="test",
        seed=seed,
        success=None if seed is None else seed % 2 == 0,
        extra={"note": seed},
    )


def write_fake(
    root: Path,
    seeds: list[int | None],
    *,
    env_id: str = "test-env",
    image_shape: tuple[int, int, int] = (8, 8, 3),
    action_space: dict[str, Any] = SPACE,
    frames_per_block: int = 4,
    info: dict[str, Any] | None = None,
) -> Path:
    with DatasetWriter(
        root,
        env_id=env_id,
        image_shape=image_shape,
        action_space=action_space,
        frames_per_block=frames_per_block,
        info=info,
    ) as writer:
        for seed in seeds:
            writer.add(fake_episode(seed, image_shape=image_shape))
    return root


def assert_same_episode(a: Episode, b: Episode, where: str) -> None:
    for name in ("images", "actions", "rewards", "terminated", "truncated"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{where}: {name}")
    for name in ("instruction", "task", "env_id", "expert", "seed", "success", "extra"):
        assert getattr(a, name) == getattr(b, name), f"{where}: {name}"


def assert_holds_in_order(out: Path, inputs: list[Path]) -> None:
    merged = Dataset(out)
    expected = [(path, number) for path in inputs for number in range(len(Dataset(path)))]
    assert len(merged) == len(expected)
    for position, (path, number) in enumerate(expected):
        assert_same_episode(merged.episode(position), Dataset(path).episode(number), f"{path} {number}")


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two small datasets per env, as two machines would collect them (their own seeds)."""
    root = tmp_path_factory.mktemp("collected")
    pairs = {}
    collect(str(root / "crafter_a"), envs.CRAFTER_ID, "crafter_planner", 2, tasks=["collect_wood"], seed=0)
    collect(str(root / "crafter_b"), envs.CRAFTER_ID, "crafter_planner", 2, tasks=["collect_drink"], seed=2)
    pairs["crafter"] = (root / "crafter_a", root / "crafter_b")
    collect(str(root / "babyai_a"), BABYAI_ID, "babyai_bot", 3, seed=0)
    collect(str(root / "babyai_b"), BABYAI_ID, "babyai_bot", 2, seed=3)
    pairs["babyai"] = (root / "babyai_a", root / "babyai_b")
    return pairs


# -- merging ---------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["crafter", "babyai"])
def test_merge_keeps_every_episode_and_passes_check_and_replay(
    env: str, collected: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    a, b = collected[env]
    before = {path: folder_digest(path) for path in (a, b)}
    out = tmp_path / "merged"
    result = run_cli("data", "merge", str(a), str(b), "--out", str(out))
    assert f"merged {len(Dataset(a)) + len(Dataset(b))} episodes" in result.stdout
    assert_holds_in_order(out, [a, b])
    assert {path: folder_digest(path) for path in (a, b)} == before  # the inputs are untouched
    info = Dataset(out).metadata["info"]
    # Replay resets with each episode's task only when every input named its tasks.
    assert info["tasks"] == (["collect_wood", "collect_drink"] if env == "crafter" else None)
    assert [source["episodes"] for source in info["merged_from"]] == [len(Dataset(a)), len(Dataset(b))]
    checked = run_cli("data", "check", str(out), "--replay")
    episodes = len(Dataset(out))
    assert f"ok: {episodes} episodes" in checked.stdout
    assert f"replay: {episodes} of {episodes} replayed episodes identical" in checked.stdout


def test_tasks_named_by_one_input_only_still_replay(
    collected: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    """One machine named its tasks, the other let the env sample them: the merged metadata must
    not claim named tasks, or replay would reset the sampled episodes with a task option."""
    named, _ = collected["crafter"]
    sampled = tmp_path / "sampled"
    collect(str(sampled), envs.CRAFTER_ID, "crafter_planner", 1, seed=11)  # seed 11 samples collect_drink
    assert Dataset(sampled).episodes[0]["task"] == "collect_drink"
    merge_datasets([named, sampled], tmp_path / "merged")
    assert Dataset(tmp_path / "merged").metadata["info"]["tasks"] is None
    checked = run_cli("data", "check", str(tmp_path / "merged"), "--replay")
    assert "replay: 3 of 3 replayed episodes identical" in checked.stdout


def test_library_summary_and_a_different_block_size(tmp_path: Path) -> None:
    """frames_per_block is storage, not content: an input stored otherwise is re-blocked."""
    a = write_fake(tmp_path / "a", [1, 2, None], frames_per_block=4)
    b = write_fake(tmp_path / "b", [3, None], frames_per_block=3)
    calls: list[tuple[str, int, int]] = []
    summary = merge_datasets([a, b], tmp_path / "c", progress=lambda *call: calls.append(call))
    assert_holds_in_order(tmp_path / "c", [a, b])
    assert Dataset(tmp_path / "c").frames_per_block == 4
    assert Dataset(tmp_path / "c").check() == []
    assert summary["episodes"] == summary["total_episodes"] == 5
    assert summary["steps"] == 25
    assert summary["appended_to"] == 0
    assert [source["episodes"] for source in summary["inputs"]] == [3, 2]
    assert calls[-1] == ("merge", 5, 5) and ("check", 5, 5) in calls


def test_an_existing_dataset_is_appended_to_as_collect_does(tmp_path: Path) -> None:
    a = write_fake(tmp_path / "a", [1, 2])
    out = write_fake(tmp_path / "out", [7])
    kept = Dataset(out).episode(0)
    summary = merge_datasets([a], out)
    assert (summary["appended_to"], summary["episodes"], summary["total_episodes"]) == (1, 2, 3)
    merged = Dataset(out)
    assert_same_episode(merged.episode(0), kept, "earlier episode")
    for number in range(2):
        assert_same_episode(merged.episode(number + 1), Dataset(a).episode(number), f"a {number}")


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "changed"),
    [
        ("env_id", {"env_id": "other-env"}),
        ("image_shape", {"image_shape": (6, 8, 3)}),
        ("action_space", {"action_space": {"type": "Discrete", "n": 6}}),
        ("info.env_kwargs", {"info": {"env_kwargs": {"size": [32, 32]}}}),
        ("info.actions", {"info": {"actions": {"components": ["forward"]}}}),
    ],
)
def test_a_metadata_mismatch_is_refused_naming_the_field_and_both_datasets(
    field: str, changed: dict[str, Any], tmp_path: Path
) -> None:
    a = write_fake(tmp_path / "a", [1])
    b = write_fake(tmp_path / "b", [2], **changed)
    with pytest.raises(DatasetError, match=rf"cannot merge with {a}: {field} is .* in {b} but .* in {a}"):
        merge_datasets([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_mismatch_with_the_dataset_appended_to_is_refused(tmp_path: Path) -> None:
    a = write_fake(tmp_path / "a", [1], info={"env_kwargs": {"size": [32, 32]}})
    out = write_fake(tmp_path / "out", [7])
    before = folder_digest(out)
    with pytest.raises(DatasetError, match=rf"cannot append to {out}: info.env_kwargs is"):
        merge_datasets([a], out)
    assert folder_digest(out) == before


def test_appending_sampled_tasks_to_a_dataset_of_named_tasks_is_refused(tmp_path: Path) -> None:
    a = write_fake(tmp_path / "a", [1], info={"tasks": None})
    out = write_fake(tmp_path / "out", [7], info={"tasks": ["collect_wood"]})
    with pytest.raises(DatasetError, match=rf"{a} was not, so its episodes would not replay there"):
        merge_datasets([a], out)
    assert len(Dataset(out)) == 1


def test_duplicate_seeds_are_refused_then_merged_with_the_flag(tmp_path: Path) -> None:
    a = write_fake(tmp_path / "a", [0, 1, 2, None])
    b = write_fake(tmp_path / "b", [2, 3, None])
    with pytest.raises(DatasetError, match=rf"1 episode seed\(s\) recorded more than once across {a}, {b}: "):
        merge_datasets([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetError, match=rf"seed 2 in {a} and {b}\. .*--allow-duplicate-seeds"):
        merge_datasets([a, b], tmp_path / "out")
    summary = merge_datasets([a, b], tmp_path / "out", allow_duplicate_seeds=True)
    assert summary["duplicate_seeds"] == 1
    assert_holds_in_order(tmp_path / "out", [a, b])


def test_a_seed_repeated_within_one_input_and_many_duplicates_are_named(tmp_path: Path) -> None:
    once = write_fake(tmp_path / "once", [7, 7])
    with pytest.raises(DatasetError, match=rf"seed 7 2 times in {once}"):
        merge_datasets([once], tmp_path / "out")
    a = write_fake(tmp_path / "a", list(range(8)))
    b = write_fake(tmp_path / "b", list(range(8)))
    with pytest.raises(DatasetError) as refused:
        merge_datasets([a, b], tmp_path / "out")
    message = str(refused.value)
    assert message.startswith("8 episode seed(s) recorded more than once")
    assert f"seed 4 in {a} and {b}; and 3 more." in message and "seed 5 " not in message


def test_seeds_already_in_the_dataset_appended_to_count(tmp_path: Path) -> None:
    a = write_fake(tmp_path / "a", [1, 2])
    out = write_fake(tmp_path / "out", [2])
    with pytest.raises(DatasetError, match=rf"seed 2 in {out} and {a}"):
        merge_datasets([a], out)


def test_outputs_that_would_touch_an_input_are_refused(tmp_path: Path) -> None:
    a = write_fake(tmp_path / "a", [1])
    b = write_fake(tmp_path / "b", [2])
    before = folder_digest(tmp_path)
    with pytest.raises(DatasetError, match=rf"--out {a} is the input {a}"):
        merge_datasets([a, b], a)
    with pytest.raises(DatasetError, match=r"inside one another"):
        merge_datasets([a, b], a / "merged")
    with pytest.raises(DatasetError, match=r"inside one another"):
        merge_datasets([a, b], tmp_path)
    again = f"{b}/../a"
    with pytest.raises(DatasetError, match=rf"{again} is given twice \(as {a} and {again}\)"):
        merge_datasets([a, again], tmp_path / "out")
    assert folder_digest(tmp_path) == before


def test_a_folder_that_is_not_a_dataset_is_refused(tmp_path: Path) -> None:
    a = write_fake(tmp_path / "a", [1])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"is not empty and is not an instructcraft dataset"):
        merge_datasets([a], tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["notes.txt"]


def test_a_corrupt_input_episode_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    a = write_fake(tmp_path / "a", [1])
    b = write_fake(tmp_path / "b", [2, 3])
    episode = b / episode_file(1)
    data = bytearray(episode.read_bytes())
    data[len(data) // 2] ^= 0xFF
    episode.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"{b} has 1 bad episode\(s\), the first: .*checksum mismatch"):
        merge_datasets([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_tampered_index_or_an_outside_link_is_refused(tmp_path: Path) -> None:
    a = write_fake(tmp_path / "a", [1])
    b = write_fake(tmp_path / "b", [2])
    entries = [json.loads(line) for line in (b / "index.jsonl").read_text().splitlines()]
    entries[0]["file"] = f"../a/{episode_file(0)}"
    (b / "index.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    with pytest.raises(DatasetError, match=r"is outside .*refusing to read it"):
        merge_datasets([a, b], tmp_path / "out")
    linked = write_fake(tmp_path / "linked", [3])
    outside = tmp_path / "elsewhere.npz"
    (linked / episode_file(0)).rename(outside)
    (linked / episode_file(0)).symlink_to(outside)
    with pytest.raises(DatasetError, match=r"is a link to .*outside .*refusing to read it"):
        merge_datasets([a, linked], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- Ctrl-C --------------------------------------------------------------------------------------


def interrupt_during_add(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """SIGINT arrives in the middle of the writer's ``call``-th commit: as its episode file is
    written, before its index line."""
    import envs.data.writer as writer_module

    write = writer_module.atomic_write_bytes
    calls = []

    def write_interrupted(path: Path, data: bytes) -> None:
        if "episodes" in Path(path).parts:
            calls.append(1)
            if len(calls) == call:
                os.kill(os.getpid(), signal.SIGINT)
        write(path, data)

    monkeypatch.setattr(writer_module, "atomic_write_bytes", write_interrupted)


def test_ctrl_c_keeps_the_episode_being_committed_and_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write_fake(tmp_path / "a", [1, 2])
    b = write_fake(tmp_path / "b", [3, 4])
    interrupt_during_add(monkeypatch, call=3)
    with pytest.raises(KeyboardInterrupt):
        merge_datasets([a, b], tmp_path / "out")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    out = Dataset(tmp_path / "out")
    assert len(out) == 3  # the interrupted commit finished; the fourth never started
    assert out.check() == [] and out.orphans() == []
    assert_same_episode(out.episode(2), Dataset(b).episode(0), "b 0")


def test_the_cli_exits_130_on_ctrl_c_and_names_what_it_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_fake(tmp_path / "a", [1, 2])
    b = write_fake(tmp_path / "b", [3, 4])
    out = tmp_path / "out"
    interrupt_during_add(monkeypatch, call=2)
    assert main(["data", "merge", str(a), str(b), "--out", str(out)]) == 130
    assert f"interrupted: kept the 2 episode(s) merged before Ctrl-C in {out}" in capsys.readouterr().err
    assert main(["data", "check", str(out)]) == 0


# -- the command line ------------------------------------------------------------------------------


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_fake(tmp_path / "a", [1, 2])
    b = write_fake(tmp_path / "b", [2])
    odd = write_fake(tmp_path / "odd", [5], image_shape=(6, 8, 3))
    out = str(tmp_path / "out")
    assert main(["data", "merge", str(a), str(odd), "--out", out]) == 2
    assert f"error: cannot merge with {a}: image_shape is [6, 8, 3] in {odd}" in capsys.readouterr().err
    assert main(["data", "merge", str(a), str(b), "--out", out]) == 2
    assert f"seed 2 in {a} and {b}" in capsys.readouterr().err
    assert not Path(out).exists()
    assert main(["data", "merge", str(a), str(b), "--out", out, "--allow-duplicate-seeds", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["episodes"], summary["duplicate_seeds"]) == (3, 1)
    assert main(["data", "merge", str(tmp_path / "missing"), "--out", str(tmp_path / "other")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_merge_has_its_own_help_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["data", "merge", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: instructcraft data merge ")
    assert "--allow-duplicate-seeds" in text and "--replay" not in text
    with pytest.raises(SystemExit) as refused:
        main(["data", "merge", "a", "b"])  # --out is required
    assert refused.value.code == 2
    with pytest.raises(SystemExit):
        main(["data", "check", "a", "--allow-duplicate-seeds"])
