"""Format version 2 (episode files in sub-folders, the index as columns with a snapshot), the
version-1 fixture written before it, and ``data upgrade`` stopped at every step."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

import envs.data.format as format_module
import envs.data.index as index_module
import envs.data.upgrade as upgrade_module
from envs.data.format import SNAPSHOT, read_index
from envs.data.store import Dataset, DatasetError, DatasetWriter, Episode, episode_file
from envs.data.upgrade import upgrade_dataset
from envs.replay import replay_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "dataset_v1"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def version_1(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "v1"))


@pytest.fixture
def small_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two episodes a sub-folder, so a few episodes span several."""
    monkeypatch.setattr(format_module, "EPISODES_PER_FOLDER", 2)


def fake_episode(rng: np.random.Generator, steps: int, **fields: object) -> Episode:
    return Episode(
        images=rng.integers(0, 256, (steps + 1, 64, 64, 3), dtype=np.uint8),
        actions=rng.integers(0, 7, steps),
        rewards=rng.random(steps).astype(np.float32),
        terminated=np.arange(steps) == steps - 1,
        truncated=np.zeros(steps, bool),
        instruction="go to the red ball",
        task="GoToRedBall",
        env_id="instructcraft/BabyAI-GoToRedBall-v0",
        **fields,  # type: ignore[arg-type]
    )


def writer(root: Path) -> DatasetWriter:
    return DatasetWriter(
        root,
        env_id="instructcraft/BabyAI-GoToRedBall-v0",
        image_shape=(64, 64, 3),
        action_space={"type": "Discrete", "n": 7},
    )


def original_bytes() -> dict[int, bytes]:
    entries, _ = read_index(FIXTURE)
    return {entry["episode"]: (FIXTURE / entry["file"]).read_bytes() for entry in entries}


def assert_readable_with_every_episode_intact(root: Path) -> None:
    """What any stop of the upgrade must leave: the dataset opens and checks clean, each episode
    file holds its original bytes, and while metadata.json still says version 1, every file is
    where a version-1 reader looks for it."""
    dataset = Dataset(root)
    assert dataset.check() == []
    assert {n: dataset.file(n).read_bytes() for n in range(len(dataset))} == original_bytes()
    if dataset.metadata["format_version"] == 1:
        for number, entry in enumerate(read_index(root)[0]):
            assert entry["file"] == f"episodes/{number:06d}.npz" and (root / entry["file"]).is_file()


def assert_upgraded(root: Path) -> None:
    dataset = Dataset(root)
    assert dataset.metadata["format_version"] == 2
    assert [entry["file"] for entry in dataset.episodes] == [episode_file(n) for n in range(3)]
    assert_readable_with_every_episode_intact(root)
    assert sorted(p.name for p in (root / "episodes").iterdir() if p.is_file()) == []
    assert dataset.orphans() == [] and dataset.foreign() == []


# -- version 1, as written before version 2 existed ----------------------------------------------


def test_the_version_1_fixture_reads_checks_and_replays(version_1: Path) -> None:
    dataset = Dataset(version_1)
    assert dataset.metadata["format_version"] == 1 and len(dataset) == 3 and dataset.num_steps == 17
    assert [entry["file"] for entry in dataset.episodes] == [f"episodes/{n:06d}.npz" for n in range(3)]
    assert dataset.check() == [] and dataset.orphans() == [] and dataset.foreign() == []
    assert [entry["sha256"] for entry in dataset.episodes] == [
        sha256(version_1 / "episodes" / f"{n:06d}.npz") for n in range(3)
    ]
    episode = dataset.episode(1)
    assert episode.images.shape == (episode.length + 1, 64, 64, 3) and episode.seed == 1
    assert all(result.ok for result in replay_dataset(version_1))
    assert not (version_1 / SNAPSHOT).exists()  # reading writes nothing


def test_appending_to_a_version_1_dataset_keeps_its_layout(version_1: Path) -> None:
    with writer(version_1) as append:
        append.add(fake_episode(np.random.default_rng(0), 5, seed=9))
    dataset = Dataset(version_1)
    assert dataset.metadata["format_version"] == 1 and dataset.episodes[3]["file"] == "episodes/000003.npz"
    assert dataset.check() == [] and not (version_1 / SNAPSHOT).exists()


# -- version 2 -----------------------------------------------------------------------------------


def test_new_datasets_spread_episode_files_over_sub_folders(tmp_path: Path, small_folders: None) -> None:
    rng = np.random.default_rng(1)
    with writer(tmp_path / "d") as write:
        for steps in (1, 2, 3, 4, 5):
            write.add(fake_episode(rng, steps))
    dataset = Dataset(tmp_path / "d")
    assert dataset.metadata["format_version"] == 2
    assert [entry["file"] for entry in dataset.episodes] == [
        "episodes/000/000000.npz",
        "episodes/000/000001.npz",
        "episodes/001/000002.npz",
        "episodes/001/000003.npz",
        "episodes/002/000004.npz",
    ]
    assert all(dataset.file(n).is_file() for n in range(5)) and dataset.check() == []
    (tmp_path / "d" / "episodes" / "001" / ".000009.npz.tmp-7").write_bytes(b"torn")
    (tmp_path / "d" / "episodes" / "001" / "notes.txt").write_text("mine")
    assert [p.name for p in dataset.orphans()] == [".000009.npz.tmp-7"]
    assert [p.name for p in dataset.foreign()] == ["notes.txt"]


def test_the_table_gives_back_every_entry_as_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    odd = [
        {"seed": None, "success": None, "expert": ""},
        {"seed": 2**40, "success": False, "extra": {"dagger_round": 1, "nested": [1, "a"]}},
        {"seed": -3, "success": True, "expert": "bot"},
    ]
    with writer(tmp_path / "d") as write:
        for fields in odd:
            write.add(fake_episode(rng, 3, **fields))
    lines, _ = read_index(tmp_path / "d")
    snapshot = Dataset(tmp_path / "d")  # from the snapshot the writer saved
    (tmp_path / "d" / SNAPSHOT).unlink()
    parsed = Dataset(tmp_path / "d")  # from the lines
    assert list(snapshot.episodes) == list(parsed.episodes) == lines
    assert [list(entry) for entry in snapshot.episodes] == [list(line) for line in lines]  # key order
    assert snapshot.summary() == parsed.summary()
    assert snapshot.episodes[-1] == lines[-1] and snapshot.episodes[1:] == lines[1:]


def test_the_snapshot_is_only_a_cache(tmp_path: Path) -> None:
    root = tmp_path / "d"
    rng = np.random.default_rng(3)
    with writer(root) as write:
        for _ in range(3):
            write.add(fake_episode(rng, 2, seed=1))
    # An index edited after the snapshot was saved: the edit is what is read.
    lines = (root / "index.jsonl").read_text().splitlines()
    entry = json.loads(lines[1])
    entry["instruction"] = "edited"
    lines[1] = json.dumps(entry)
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")
    assert Dataset(root).episodes[1]["instruction"] == "edited"
    # Appended lines after the snapshot's prefix are read on top of it.
    with writer(root) as write:
        write.add(fake_episode(rng, 2, seed=4))
    saved = (root / SNAPSHOT).read_bytes()
    with open(root / "index.jsonl", "ab") as handle:
        handle.write(json.dumps({**entry, "episode": 4, "file": episode_file(4), "seed": 5}).encode() + b"\n")
    shutil.copy(Dataset(root).file(3), root / episode_file(4))
    assert [e["seed"] for e in Dataset(root).episodes] == [1, 1, 1, 4, 5]
    # Garbage, a folder or a FIFO in its place: ignored (a FIFO is never opened).
    for kind in ("garbage", "folder", "fifo"):
        (root / SNAPSHOT).unlink()
        if kind == "garbage":
            (root / SNAPSHOT).write_bytes(saved[: len(saved) // 2])
        elif kind == "folder":
            (root / SNAPSHOT).mkdir()
        else:
            os.mkfifo(root / SNAPSHOT)
        assert [e["seed"] for e in Dataset(root).episodes] == [1, 1, 1, 4, 5], kind
        if kind == "folder":
            (root / SNAPSHOT).rmdir()
            (root / SNAPSHOT).touch()


@pytest.mark.parametrize(
    "file",
    [
        "episodes/000/../../x.npz",
        "episodes/../x.npz",
        "episodes/000/000/000001.npz",
        "episodes/./000001.npz",
        "episodes//000001.npz",
        "/episodes/000/000001.npz",
        "episodes\\000\\000001.npz",
    ],
)
def test_index_files_outside_episodes_are_refused_in_the_sub_folder_form(tmp_path: Path, file: str) -> None:
    root = tmp_path / "d"
    with writer(root) as write:
        for _ in range(2):
            write.add(fake_episode(np.random.default_rng(4), 2))
    lines = (root / "index.jsonl").read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "file": file})
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"index.jsonl line 2: episode file .* is outside"):
        Dataset(root)


def test_a_sub_folder_linked_out_of_episodes_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "d"
    with writer(root) as write:
        write.add(fake_episode(np.random.default_rng(5), 2))
    (root / "episodes" / "000").rename(tmp_path / "elsewhere")
    (root / "episodes" / "000").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=r"is a link to .* outside .*refusing to read it"):
        Dataset(root).chunk(0, 0, 2)


# -- data upgrade --------------------------------------------------------------------------------


def test_upgrade_converts_the_version_1_fixture_in_place(version_1: Path, small_folders: None) -> None:
    summary = upgrade_dataset(version_1)
    assert (summary["from_version"], summary["upgraded"], summary["linked"], summary["copied"]) == (
        1,
        True,
        3,
        0,
    )
    assert_upgraded(version_1)
    assert (version_1 / SNAPSHOT).is_file()
    assert all(result.ok for result in replay_dataset(version_1))
    again = upgrade_dataset(version_1)
    assert not again["upgraded"] and again["linked"] == again["old_names_removed"] == 0


def test_upgrade_copies_where_the_file_system_has_no_hard_links(
    version_1: Path, small_folders: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    summary = upgrade_dataset(version_1)
    assert (summary["linked"], summary["copied"]) == (0, 3)
    assert_upgraded(version_1)


class Stop(Exception):
    """The upgrade stopped here (a crash, Ctrl-C, a full disk)."""


def stop_at(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Make the upgrade stop at ``where``: the k-th hard link, the metadata switch, the index
    rewrite, the snapshot, or the k-th removal of a version-1 name."""
    kind, _, count = where.partition(":")
    calls = []

    def counted(original: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            calls.append(1)
            if len(calls) == int(count or 1):
                raise Stop(where)
            return original(*args, **kwargs)

        return call

    if kind == "link":
        monkeypatch.setattr(os, "link", counted(os.link))
    elif kind == "unlink":
        monkeypatch.setattr(Path, "unlink", counted(Path.unlink))
    else:
        name = {"metadata": "metadata.json", "index": "index.jsonl"}.get(kind)
        module = index_module if kind == "snapshot" else upgrade_module
        write = module.atomic_write_bytes

        def stopped(path: Path, data: bytes) -> None:
            if name is None or Path(path).name == name:
                raise Stop(where)
            write(path, data)

        monkeypatch.setattr(module, "atomic_write_bytes", stopped)


@pytest.mark.parametrize(
    "where", ["link:1", "link:2", "link:3", "metadata", "index", "snapshot", "unlink:1", "unlink:3"]
)
def test_upgrade_stopped_anywhere_leaves_a_readable_dataset_and_a_rerun_finishes(
    version_1: Path, small_folders: None, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    with monkeypatch.context() as patch:
        stop_at(patch, where)
        with pytest.raises(Stop):
            upgrade_dataset(version_1)
    assert_readable_with_every_episode_intact(version_1)
    upgrade_dataset(version_1)
    assert_upgraded(version_1)
    assert all(result.ok for result in replay_dataset(version_1))


def test_upgrade_refuses_a_folder_that_is_not_a_dataset_and_a_locked_one(
    version_1: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing", FIXTURE / "metadata.json"):
        with pytest.raises(
            DatasetError, match=rf"^{path} is not an instructcraft dataset .*: pass the folder"
        ):
            upgrade_dataset(path)
    with (
        writer(version_1),
        pytest.raises(DatasetError, match=rf"^{version_1} is being written by another process .*run "),
    ):
        upgrade_dataset(version_1)
    assert Dataset(version_1).metadata["format_version"] == 1  # nothing changed
    assert_readable_with_every_episode_intact(version_1)


def test_the_upgrade_command(version_1: Path, tmp_path: Path) -> None:
    result = run_cli("data", "upgrade", str(version_1))
    assert result.stdout.startswith(f"upgraded {version_1} from format version 1 to 2: 3 episode files")
    again = run_cli("data", "upgrade", str(version_1))
    assert f"{version_1} is already at format version 2: nothing to upgrade" in again.stdout
    refused = run_cli("data", "upgrade", str(tmp_path), check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"error: {tmp_path} is not an instructcraft dataset")
    checked = run_cli("data", "check", str(version_1))
    assert "ok: 3 episodes, 17 steps verified" in checked.stdout
