"""ChunkDataset (unpacked chunks): absolute step times, masks at episode edges, discounted
reward-to-go for the value head, and which episodes it keeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

from envs.data.store import DatasetWriter, Episode
from train.data import ChunkDataset

REWARDS = {0: [0.0, 1.0, 0.0, 0.0, 2.0], 1: [1.0, 1.0, 1.0], 2: [5.0, 5.0]}
# gamma = 0.5, worked by hand from the end of each episode.
RETURNS = {0: [0.625, 1.25, 0.5, 1.0, 2.0], 1: [1.75, 1.5, 1.0]}


def write(root: Path) -> str:
    with DatasetWriter(root, env_id="test", image_shape=(8, 8, 3), action_space=spaces.Discrete(5)) as writer:
        for number, rewards in REWARDS.items():
            steps = len(rewards)
            images = np.stack([np.full((8, 8, 3), 10 * t + number, np.uint8) for t in range(steps + 1)])
            writer.add(
                Episode(
                    images=images,
                    actions=(np.arange(steps) + number) % 5,
                    rewards=np.asarray(rewards, np.float32),
                    terminated=np.eye(steps, dtype=bool)[-1],
                    truncated=np.zeros(steps, bool),
                    instruction=f"task {number}",
                    task=f"t{number}",
                    env_id="test",
                    success=number != 2,  # the expert failed episode 2
                )
            )
    return str(root)


@pytest.mark.parametrize("cache_mib", [0, 1])
def test_chunks_carry_absolute_times_edge_masks_and_returns(tmp_path: Path, cache_mib: int) -> None:
    """The same rows with the episode cache off and on (every row read twice: the second time
    from the cache)."""
    chunks = ChunkDataset(write(tmp_path / "data"), 4, gamma=0.5, cache_mib=cache_mib)
    assert chunks.items == [(0, 0), (0, 4), (1, 0)]  # episode 2 failed: skipped
    for index, (number, start) in enumerate([*chunks.items, *chunks.items]):
        item = chunks[index % len(chunks)]
        steps = min(4, len(REWARDS[number]) - start)
        assert item["times"].tolist() == list(range(start, start + 4))  # absolute, not chunk-relative
        assert item["frame_mask"].tolist() == [True] * steps + [False] * (4 - steps)
        frames = item["frames"][:, 0, 0, 0].tolist()
        assert frames == [10 * t + number for t in range(start, start + steps)] + [0] * (4 - steps)
        assert item["actions"][:steps].tolist() == [(t + number) % 5 for t in range(start, start + steps)]
        np.testing.assert_allclose(item["returns"][:steps], RETURNS[number][start : start + steps], rtol=1e-6)
        assert not item["returns"][steps:].any()
        assert item["instruction"] == f"task {number}" and item["task"] == f"t{number}"
    everything = ChunkDataset(str(tmp_path / "data"), 4, only_success=False, gamma=0.5, cache_mib=cache_mib)
    assert everything.items[-1] == (2, 0)
    np.testing.assert_allclose(everything[3]["returns"][:2], [7.5, 5.0])
    assert ChunkDataset(str(tmp_path / "data"), 4, episodes=[1]).items == [(1, 0)]
    with pytest.raises(ValueError, match="no episodes to train on"):
        ChunkDataset(str(tmp_path / "data"), 4, episodes=[2])


def test_the_episode_cache_decodes_each_episode_once_and_keeps_to_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = ChunkDataset(write(tmp_path / "data"), 2, gamma=0.5, cache_mib=1)
    decoded: list[int] = []
    read = chunks.data.chunk
    monkeypatch.setattr(chunks.data, "chunk", lambda n, a, b, **k: (decoded.append(n), read(n, a, b, **k))[1])
    for _ in range(3):  # three epochs
        for index in range(len(chunks)):
            chunks[index]
    assert sorted(decoded) == [0, 1]  # each trained episode decompressed once
    # Decoded sizes: episode 0 holds 960 bytes of frames + 40 of actions + 20 of returns = 1020,
    # episode 1 612, episode 2 408. A 1700-byte budget holds two; the least recently used leaves.
    every = ChunkDataset(str(tmp_path / "data"), 8, only_success=False, gamma=0.5, cache_mib=1)
    every.cache_limit = 1700
    row = {number: every.items.index((number, 0)) for number in (0, 1, 2)}
    every[row[0]]
    every[row[1]]
    assert list(every._cache) == [0, 1] and every.cache_bytes == 1632
    every[row[0]]  # a hit: episode 1 is now the least recently used
    every[row[2]]
    assert list(every._cache) == [0, 2] and every.cache_bytes == 1428
    # An episode larger than the whole budget is read piece by piece, as with the cache off,
    # and never evicts the others; a pickled dataset (a loader worker's copy) starts empty.
    every.cache_limit = 700
    every._cache.clear()
    every.cache_bytes = 0
    every[row[1]]
    decoded.clear()
    monkeypatch.setattr(
        every.data, "chunk", lambda n, a, b, **k: (decoded.append((n, a, b)), read(n, a, b, **k))[1]
    )
    every[row[0]]
    assert list(every._cache) == [1] and decoded == [(0, 0, 5)]  # the piece; rewards are read without frames
    import pickle

    monkeypatch.undo()  # the counting reader is not picklable
    copy = pickle.loads(pickle.dumps(every))
    assert not copy._cache and copy.cache_bytes == 0 and every._cache
    with pytest.raises(ValueError, match="cache_mib must be >= 0"):
        ChunkDataset(str(tmp_path / "data"), 2, cache_mib=-1)
