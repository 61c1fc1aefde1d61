from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from envs.data.store import Dataset, DatasetError, DatasetWriter, Episode, episode_file

SPACE = {"type": "Discrete", "n": 17}


def fake_episode(rng: np.random.Generator, steps: int, task: str = "collect_wood") -> Episode:
    return Episode(
        images=rng.integers(0, 256, (steps + 1, 8, 8, 3), dtype=np.uint8),
        actions=rng.integers(0, 17, steps),
        rewards=rng.random(steps).astype(np.float32),
        terminated=np.arange(steps) == steps - 1,
        truncated=np.zeros(steps, bool),
        instruction=f"do {task}",
        task=task,
        env_id="test-env",
        expert="test",
        seed=int(rng.integers(100)),
        success=True,
    )


def write(root: Path, episodes: list[Episode], frames_per_block: int = 4) -> None:
    with DatasetWriter(
        root, env_id="test-env", image_shape=(8, 8, 3), action_space=SPACE, frames_per_block=frames_per_block
    ) as writer:
        for episode in episodes:
            writer.add(episode)


def test_round_trip_whole_episodes_and_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    episodes = [fake_episode(rng, steps) for steps in (1, 5, 13, 40)]
    write(tmp_path / "d", episodes)
    dataset = Dataset(tmp_path / "d")
    assert len(dataset) == 4 and dataset.num_steps == 59
    for number, original in enumerate(episodes):
        loaded = dataset.episode(number)
        for name in ("images", "actions", "rewards", "terminated", "truncated"):
            assert np.array_equal(getattr(loaded, name), getattr(original, name)), name
        assert (loaded.instruction, loaded.task, loaded.seed) == (
            original.instruction,
            original.task,
            original.seed,
        )
    original = episodes[3]
    for start, stop in [(0, 1), (3, 9), (4, 8), (7, 40), (39, 40), (10, 60)]:
        chunk = dataset.chunk(3, start, stop)
        assert np.array_equal(chunk["images"], original.images[start : min(stop, 40)])
        assert np.array_equal(chunk["actions"], original.actions[start:stop])
    assert dataset.check() == []


def test_chunk_inflates_only_the_blocks_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "d", [fake_episode(np.random.default_rng(1), 64)], frames_per_block=8)
    dataset = Dataset(tmp_path / "d")
    read: list[str] = []
    original = dataset._member
    monkeypatch.setattr(dataset, "_member", lambda ep, name: read.append(name) or original(ep, name))
    dataset.images(0, 17, 23)
    assert read == ["images_0002"]


def test_append_reopens_and_continues_numbering(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    write(tmp_path / "d", [fake_episode(rng, 3)])
    write(tmp_path / "d", [fake_episode(rng, 4), fake_episode(rng, 5)])
    dataset = Dataset(tmp_path / "d")
    assert [e["episode"] for e in dataset.episodes] == [0, 1, 2]
    assert [e["length"] for e in dataset.episodes] == [3, 4, 5]


def test_append_with_different_shape_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "d", [fake_episode(np.random.default_rng(3), 3)])
    with pytest.raises(
        DatasetError,
        match=r"cannot append, image_shape is \[8, 8, 3\] but the new episodes have \[64, 64, 3\]",
    ):
        DatasetWriter(tmp_path / "d", env_id="x", image_shape=(64, 64, 3), action_space=SPACE)


def test_second_writer_is_refused(tmp_path: Path) -> None:
    with (
        DatasetWriter(tmp_path / "d", env_id="x", image_shape=(8, 8, 3), action_space=SPACE),
        pytest.raises(DatasetError, match="being written by another process"),
    ):
        DatasetWriter(tmp_path / "d", env_id="x", image_shape=(8, 8, 3), action_space=SPACE)


def test_episode_validation() -> None:
    rng = np.random.default_rng(0)
    episode = fake_episode(rng, 3)
    with pytest.raises(ValueError, match="expected 4 images for 3 actions, got 3"):
        Episode(**{**episode.__dict__, "images": episode.images[:3]})
    with pytest.raises(
        ValueError, match=r"expected images \(T\+1, H, W, 3\) uint8, got \(4, 8, 8, 3\) float64"
    ):
        Episode(**{**episode.__dict__, "images": episode.images.astype(float)})


WRITER = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from test_dataset import fake_episode
from envs.data.store import DatasetWriter
rng = np.random.default_rng(0)
with DatasetWriter({root!r}, env_id="test-env", image_shape=(8, 8, 3),
                   action_space={{"type": "Discrete", "n": 17}}, frames_per_block=4) as writer:
    while True:
        writer.add(fake_episode(rng, int(rng.integers(50, 400))))
"""


def test_killed_writer_leaves_earlier_episodes_readable(tmp_path: Path) -> None:
    root = tmp_path / "d"
    code = WRITER.format(tests=str(Path(__file__).parent), root=str(root))
    process = subprocess.Popen([sys.executable, "-c", code])
    index = root / "index.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if index.exists() and index.read_bytes().count(b"\n") >= 5:
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    dataset = Dataset(root)
    assert len(dataset) >= 5
    assert dataset.check() == []
    for number in range(len(dataset)):
        dataset.episode(number)
    # A new writer takes over where the killed one stopped.
    write(root, [fake_episode(np.random.default_rng(9), 2)])
    assert len(Dataset(root)) == len(dataset) + 1 and Dataset(root).check() == []


GROUP_WRITER = """
import dataclasses, sys, numpy as np
sys.path.insert(0, {tests!r})
from test_dataset import fake_episode
from envs.data.store import DatasetWriter
rng = np.random.default_rng(0)
with DatasetWriter({root!r}, env_id="test-env", image_shape=(8, 8, 3),
                   action_space={{"type": "Discrete", "n": 17}}, frames_per_block=4) as writer:
    for game in range(10**6):
        seed = {offset} + game
        pieces = [dataclasses.replace(fake_episode(rng, int(rng.integers(50, 400))), seed=seed) for _ in range(3)]
        writer.add_all(pieces)
"""


def test_killed_group_writer_leaves_whole_groups_only(tmp_path: Path) -> None:
    # A plan-following game is written as one episode per instruction; killed between two of
    # them, the dataset must not hold half a game (a resumed DAgger round would count its seed).
    root = tmp_path / "d"
    seen: set[int] = set()
    for attempt in range(3):  # kill at three different moments, each run writing its own seeds
        code = GROUP_WRITER.format(tests=str(Path(__file__).parent), root=str(root), offset=attempt * 10**6)
        process = subprocess.Popen([sys.executable, "-c", code])
        index = root / "index.jsonl"
        target = (attempt + 1) * 7
        deadline = time.time() + 60
        while time.time() < deadline:
            if index.exists() and index.read_bytes().count(b"\n") >= target:
                break
            time.sleep(0.001)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        dataset = Dataset(root)
        assert dataset.check() == []
        counts: dict[int, int] = {}
        for entry in dataset.episodes:
            counts[entry["seed"]] = counts.get(entry["seed"], 0) + 1
        assert len(dataset) % 3 == 0 and set(counts.values()) == {3}, counts
        seen |= set(counts)
    assert seen


def test_add_all_refuses_or_undoes_the_whole_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    root = tmp_path / "d"
    write(root, [fake_episode(rng, 3)])
    odd = fake_episode(rng, 2)
    odd = Episode(**{**odd.__dict__, "images": np.zeros((3, 4, 4, 3), np.uint8)})
    with (
        DatasetWriter(root, env_id="test-env", image_shape=(8, 8, 3), action_space=SPACE) as writer,
        pytest.raises(DatasetError, match=r"expected images \[8, 8, 3\], got \[4, 4, 3\]"),
    ):
        writer.add_all([fake_episode(rng, 2), odd])
    assert len(Dataset(root)) == 1 and Dataset(root).orphans() == []
    # The index write fails (a full disk): neither episode is committed, their files are removed.
    real_fsync = os.fsync
    with DatasetWriter(root, env_id="test-env", image_shape=(8, 8, 3), action_space=SPACE) as writer:
        index_fd = writer._index.fileno()

        def failing_fsync(fd: int) -> None:
            if fd == index_fd:
                raise OSError(28, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(
            DatasetError, match=r"no space left on device while writing .*index\.jsonl; the 1 earlier"
        ):
            writer.add_all([fake_episode(rng, 2), fake_episode(rng, 3)])
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert writer.add_all([fake_episode(rng, 4), fake_episode(rng, 5)]) == [1, 2]
    dataset = Dataset(root)
    assert [entry["length"] for entry in dataset.episodes] == [3, 4, 5]
    assert dataset.check() == [] and dataset.orphans() == []


def test_torn_index_line_is_ignored_then_cut(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    write(tmp_path / "d", [fake_episode(rng, 3), fake_episode(rng, 3)])
    index = tmp_path / "d" / "index.jsonl"
    with open(index, "ab") as handle:
        handle.write(b'{"episode": 2, "file": "episodes/0000')
    assert len(Dataset(tmp_path / "d")) == 2
    write(tmp_path / "d", [fake_episode(rng, 4)])
    lines = index.read_text().splitlines()
    assert [json.loads(line)["episode"] for line in lines] == [0, 1, 2]


def test_corrupt_episode_file_names_file_and_episode(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    write(tmp_path / "d", [fake_episode(rng, 30) for _ in range(3)])
    path = tmp_path / "d" / episode_file(1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    dataset = Dataset(tmp_path / "d")
    dataset.chunk(0, 0, 5)
    with pytest.raises(DatasetError, match=r"000001\.npz \(episode 1\) is corrupt or truncated"):
        dataset.chunk(1, 0, 5)
    problems = dataset.check()
    assert [problem.episode for problem in problems] == [1] and "000001.npz (episode 1)" in problems[
        0
    ].message


def test_corrupt_index_and_metadata(tmp_path: Path) -> None:
    write(tmp_path / "d", [fake_episode(np.random.default_rng(6), 3)])
    (tmp_path / "d" / "index.jsonl").write_text('{"episode": 0\n')
    with pytest.raises(DatasetError, match=r"index\.jsonl line 1 is corrupt"):
        Dataset(tmp_path / "d")
    meta = tmp_path / "d" / "metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format_version": 99}))
    with pytest.raises(DatasetError, match="format_version 99 is not supported"):
        Dataset(tmp_path / "d")
    with pytest.raises(DatasetError, match="is not a directory"):
        Dataset(tmp_path / "nothing")


def test_shards_partition_the_episodes(tmp_path: Path) -> None:
    write(tmp_path / "d", [fake_episode(np.random.default_rng(7), 2) for _ in range(7)])
    dataset = Dataset(tmp_path / "d")
    shards = [dataset.shard(rank, 3) for rank in range(3)]
    assert sorted(rank for shard in shards for rank in shard) == list(range(7))
    assert not set(shards[0]) & set(shards[1])
