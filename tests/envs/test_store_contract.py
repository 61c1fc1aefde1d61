"""What `instructcraft data check` (``Dataset.check``) promises: every byte of every episode is
verified (the checksum the writer recorded, every member against the index and metadata.json,
actions inside the action space, finite rewards), each bad episode is reported once, in order,
with a line naming its file and episode; ``Dataset.unreadable`` is the quick look that reads no
frames; the index is refused line by line when an entry is not as the writer writes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import store_episode as episode

from envs.data.format import SNAPSHOT, index_entries
from envs.data.store import Dataset, DatasetError, DatasetWriter, Episode, Problem

SPACE = {"type": "Discrete", "n": 4}
LENGTHS = (6, 9, 3)


def write(root: Path, episodes: list[Episode], space: dict | None = None) -> Dataset:
    """Frames in blocks of four, so an episode file holds several image members."""
    with DatasetWriter(
        root, env_id="test-env", image_shape=(8, 8, 3), action_space=space or SPACE, frames_per_block=4
    ) as writer:
        for item in episodes:
            writer.add(item)
    return Dataset(root)


@pytest.fixture
def data(tmp_path: Path) -> Dataset:
    return write(tmp_path / "d", [episode(n) for n in LENGTHS])


def rewrite(data: Dataset, number: int, members: dict[str, np.ndarray], checksum: bool = True) -> Path:
    """Episode ``number``'s file replaced by ``members``; the index records the new file's size
    and checksum (or no checksum), as if the writer had written it."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **members)
    raw = buffer.getvalue()
    path = data.file(number)
    path.write_bytes(raw)
    index = data.root / "index.jsonl"
    lines = index.read_text().splitlines()
    entry = json.loads(lines[number])
    entry["bytes"] = len(raw)
    entry["sha256"] = hashlib.sha256(raw).hexdigest()
    if not checksum:
        del entry["sha256"]
    lines[number] = json.dumps(entry)
    index.write_text("\n".join(lines) + "\n")
    (data.root / SNAPSHOT).unlink(missing_ok=True)
    return path


def members(data: Dataset, number: int) -> dict[str, np.ndarray]:
    with np.load(data.file(number)) as archive:
        return {name: archive[name] for name in archive.files}


def test_a_dataset_as_written_checks_clean(data: Dataset) -> None:
    """Nothing to report on what the writer wrote, in the quick look or the full check."""
    assert data.check() == []
    assert data.unreadable() == {"missing": [], "corrupt": []}


def test_a_changed_byte_is_a_checksum_mismatch_only_the_full_check_sees(data: Dataset) -> None:
    """One byte changed inside an episode file (same size, still a zip archive): `data check`
    reports a checksum mismatch for that episode, naming its file; the quick look, which reads
    no frames, does not see it."""
    path = data.file(1)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    fresh = Dataset(data.root)
    assert fresh.check() == [Problem(1, f"{path} (episode 1): checksum mismatch (file changed or truncated)")]
    assert fresh.unreadable() == {"missing": [], "corrupt": []}


def test_a_truncated_file_is_reported_by_both(data: Dataset) -> None:
    """A file cut short: checksum mismatch in `data check`, corrupt (size) in the quick look."""
    path = data.file(2)
    path.write_bytes(path.read_bytes()[:-10])
    fresh = Dataset(data.root)
    assert [problem.episode for problem in fresh.check()] == [2]
    assert "checksum mismatch" in str(fresh.check()[0])
    assert fresh.unreadable() == {"missing": [], "corrupt": [2]}


def test_a_missing_file_and_a_folder_in_place_of_one(data: Dataset) -> None:
    """Each bad episode once, in order: a missing file says so; a directory where the file
    should be is refused by its kind, never opened."""
    data.file(0).unlink()
    data.file(2).unlink()
    data.file(2).mkdir()
    fresh = Dataset(data.root)
    assert [str(problem) for problem in fresh.check()] == [
        f"{data.file(0)} (episode 0) is missing",
        f"{data.file(2)} (episode 2) is a directory, not a regular file; refusing to read it",
    ]
    assert [problem.episode for problem in fresh.check()] == [0, 2]
    assert fresh.unreadable() == {"missing": [0], "corrupt": [2]}


def test_a_named_pipe_in_place_of_a_file_is_refused_without_blocking(data: Dataset) -> None:
    """A FIFO would block a read forever: both checks refuse it from its status alone."""
    data.file(1).unlink()
    os.mkfifo(data.file(1))
    fresh = Dataset(data.root)
    assert [str(problem) for problem in fresh.check()] == [
        f"{data.file(1)} (episode 1) is a FIFO, not a regular file; refusing to read it"
    ]
    assert fresh.unreadable() == {"missing": [], "corrupt": [1]}


def test_a_file_of_another_size_than_recorded_is_corrupt_in_the_quick_look(data: Dataset) -> None:
    """The quick look compares each file's size with the index: a file grown by a byte is
    corrupt there, and the full check finds its checksum wrong too."""
    path = data.file(0)
    path.write_bytes(path.read_bytes() + b"\0")
    fresh = Dataset(data.root)
    assert fresh.unreadable() == {"missing": [], "corrupt": [0]}
    assert [problem.episode for problem in fresh.check()] == [0]


def test_a_file_that_is_not_an_archive_is_corrupt_in_the_quick_look(data: Dataset) -> None:
    """Bytes that are no zip archive, recorded with their size and checksum: the quick look
    calls them corrupt, and the full check says the file is corrupt or truncated."""
    path = data.file(1)
    raw = b"not an archive" * 10
    path.write_bytes(raw)
    index = data.root / "index.jsonl"
    lines = index.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["bytes"], entry["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
    lines[1] = json.dumps(entry)
    index.write_text("\n".join(lines) + "\n")
    (data.root / SNAPSHOT).unlink(missing_ok=True)
    fresh = Dataset(data.root)
    assert fresh.unreadable() == {"missing": [], "corrupt": [1]}
    (problem,) = fresh.check()
    assert problem.episode == 1 and str(problem).startswith(f"{path} (episode 1) is corrupt or truncated: ")
    assert f"Run `instructcraft data check {data.root}` to list every bad episode." in str(problem)


@pytest.mark.parametrize("checksum", [True, False])
def test_members_are_checked_against_the_index_with_or_without_a_checksum(
    data: Dataset, checksum: bool
) -> None:
    """A file whose checksum matches (or an entry without one) can still disagree with the index:
    one action too many is reported, naming the member, what it holds and what the index says."""
    changed = members(data, 0)
    changed["actions"] = np.zeros(7, np.int64)
    path = rewrite(data, 0, changed, checksum)
    (problem,) = Dataset(data.root).check()
    assert problem.episode == 0
    assert str(problem).startswith(
        f"{path} (episode 0): actions holds int64 (7,), but the index and metadata.json say int64 (6,); "
    )


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("rewards", np.zeros(6, np.float64), "rewards holds float64 (6,), but the index and metadata.json say float32 (6,)"),
        ("terminated", np.zeros(5, bool), "terminated holds bool (5,), but the index and metadata.json say bool (6,)"),
        ("truncated", np.zeros(6, np.int8), "truncated holds int8 (6,), but the index and metadata.json say bool (6,)"),
        ("images_0001", np.zeros((2, 8, 8, 3), np.uint8), "images_0001 holds uint8 (2, 8, 8, 3), but the index and metadata.json say uint8 (3, 8, 8, 3)"),
        ("images_0000", np.zeros((4, 8, 8, 4), np.uint8), "images_0000 holds uint8 (4, 8, 8, 4), but the index and metadata.json say uint8 (4, 8, 8, 3)"),
    ],
)  # fmt: skip
def test_every_member_is_checked(data: Dataset, name: str, value: np.ndarray, said: str) -> None:
    """Frames block by block (the last block holds the rest of the T+1 frames), flags and
    rewards: each member's dtype and shape are what the index and metadata.json promise."""
    changed = members(data, 0)
    changed[name] = value
    rewrite(data, 0, changed)
    (problem,) = Dataset(data.root).check()
    assert problem.episode == 0 and said in str(problem)


def test_a_missing_frame_block_is_reported(data: Dataset) -> None:
    """Every block of frames is read: an episode file without its last block is reported."""
    changed = members(data, 1)  # 9 steps: 10 frames in blocks 0, 1 and 2
    del changed["images_0002"]
    path = rewrite(data, 1, changed)
    (problem,) = Dataset(data.root).check()
    assert problem.episode == 1 and str(problem).startswith(f"{path} (episode 1) is corrupt or truncated: ")
    assert "images_0002" in str(problem)


@pytest.mark.parametrize("bad", [4, -1])
def test_an_action_outside_the_action_space_names_the_step(tmp_path: Path, bad: int) -> None:
    """Discrete(4): an action of 4 (or -1) is named with its step and the space."""
    actions = np.array([0, 3, 1, bad, 2], np.int64)
    data = write(tmp_path / "d", [episode(4), episode(5, actions=actions)])
    assert [str(problem) for problem in data.check()] == [
        f"{data.file(1)} (episode 1): action {bad} at step 3 is outside the dataset's action space Discrete(4)"
    ]


def test_a_multi_discrete_component_outside_its_range_names_the_step(tmp_path: Path) -> None:
    """MultiDiscrete([3, 2]): each component against its own count."""
    space = {"type": "MultiDiscrete", "nvec": [3, 2]}
    good = np.array([[2, 1], [0, 0], [1, 1]], np.int64)
    bad = np.array([[2, 1], [1, 2], [0, 0]], np.int64)
    data = write(tmp_path / "d", [episode(3, actions=good), episode(3, actions=bad)], space)
    assert [str(problem) for problem in data.check()] == [
        f"{data.file(1)} (episode 1): action [1, 2] at step 1 is outside the dataset's action space "
        "MultiDiscrete([3, 2])"
    ]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_reward_that_is_not_finite_names_the_step(tmp_path: Path, bad: float) -> None:
    rewards = np.array([0.0, 1.0, bad, 0.5], np.float32)
    data = write(tmp_path / "d", [episode(4, rewards=rewards), episode(3)])
    assert [str(problem) for problem in data.check()] == [
        f"{data.file(0)} (episode 0): rewards hold {np.float32(bad)} at step 2; every reward must be finite"
    ]


def test_a_chunk_past_the_end_is_clipped_or_padded_with_a_mask(data: Dataset) -> None:
    """Steps 4:9 of a 6-step episode: clipped to 2 steps, or padded to 5 with a mask of the
    recorded ones; the images are the observations each step acted on."""
    whole = data.episode(0)
    clipped = data.chunk(0, 4, 9)
    assert len(clipped["actions"]) == 2 and np.array_equal(clipped["images"], whole.images[4:6])
    padded = data.chunk(0, 4, 9, pad=True)
    assert padded["mask"].tolist() == [True, True, False, False, False]
    assert np.array_equal(padded["actions"][:2], whole.actions[4:6]) and not padded["actions"][2:].any()
    assert np.array_equal(padded["images"][:2], whole.images[4:6]) and not padded["images"][2:].any()
    with pytest.raises(IndexError, match="start must be in"):
        data.chunk(0, 6, 9)


# -- the index ----------------------------------------------------------------------------------


def entry(number: int, **changes: object) -> dict:
    base = {
        "episode": number,
        "file": f"episodes/000/{number:06d}.npz",
        "length": 3,
        "instruction": "go",
        "task": "go",
        "env_id": "test-env",
        "expert": "",
        "seed": 1,
        "success": True,
        "bytes": 10,
        "sha256": "ab",
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not ...}


def parse(tmp_path: Path, *entries: object) -> list[dict]:
    raw = b"".join(json.dumps(item).encode() + b"\n" for item in entries)
    return list(index_entries(tmp_path, raw))


def test_entries_as_the_writer_writes_them_are_accepted(tmp_path: Path) -> None:
    """Version-2 and version-1 file names, seeds and outcomes unknown, extras: all accepted."""
    entries = [
        entry(0),
        entry(1, file="episodes/000001.npz", seed=None, success=None, extra={"a": 1}),
        entry(2, expert=..., bytes=..., sha256=..., seed=..., success=...),
    ]
    assert parse(tmp_path, *entries) == entries


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"episode": 2}, "line 2: expected episode 1, got 2"),
        ({"length": ...}, 'line 2: "length" is missing (expected a whole number of steps >= 0)'),
        ({"length": -1}, 'line 2: "length" is -1, expected a whole number of steps >= 0'),
        ({"length": 2.0}, 'line 2: "length" is 2.0, expected a whole number of steps >= 0'),
        ({"length": True}, 'line 2: "length" is true, expected a whole number of steps >= 0'),
        ({"length": 2**62}, f'line 2: "length" is {2**62}, expected a whole number of steps >= 0'),
        ({"instruction": 5}, 'line 2: "instruction" is 5, expected a string'),
        ({"task": None}, 'line 2: "task" is null, expected a string'),
        ({"env_id": ...}, 'line 2: "env_id" is missing (expected a string)'),
        ({"expert": 1}, 'line 2: "expert" is 1, expected a string'),
        ({"seed": 1.5}, 'line 2: "seed" is 1.5, expected an integer or null'),
        ({"success": "yes"}, 'line 2: "success" is "yes", expected true, false or null (unknown)'),
        ({"bytes": -1}, 'line 2: "bytes" is -1, expected a whole number of bytes >= 0'),
        ({"sha256": 7}, 'line 2: "sha256" is 7, expected a hex string'),
        ({"extra": [1]}, 'line 2: "extra" is [1], expected an object'),
    ],
)
def test_an_entry_not_as_the_writer_writes_it_is_refused_naming_the_line(
    tmp_path: Path, changes: dict, said: str
) -> None:
    """Each field a reader relies on, of its type and range; episode numbers in order."""
    with pytest.raises(DatasetError) as refused:
        parse(tmp_path, entry(0), entry(1, **changes))
    assert str(refused.value) == f"{tmp_path / 'index.jsonl'} {said}"


@pytest.mark.parametrize(
    "file",
    [
        "/etc/passwd",
        "../000001.npz",
        "episodes/../../x.npz",
        "episodes/./000001.npz",
        "episodes//000001.npz",
        "episodes/000/000001.npz/",
        "episodes\\000001.npz",
        "data/000/000001.npz",
        "episodes",
        "episodes/000/000/000001.npz",
        7,
    ],
)
def test_an_episode_file_outside_episodes_is_refused(tmp_path: Path, file: object) -> None:
    """An index entry may name only a file in episodes/ or one sub-folder down, spelled plainly."""
    with pytest.raises(DatasetError) as refused:
        parse(tmp_path, entry(0), entry(1, file=file))
    assert str(refused.value) == (
        f"{tmp_path / 'index.jsonl'} line 2: episode file {file!r} is outside {tmp_path / 'episodes'}; "
        "refusing to read it (the index was edited or comes from an untrusted source)"
    )


def test_a_line_that_is_not_json_is_named_and_a_torn_last_line_is_not_committed(tmp_path: Path) -> None:
    """Blank lines are skipped; bad JSON names its line; text after the last newline (a line a
    killed writer tore) is not an entry."""
    good = json.dumps(entry(0)).encode()
    assert list(index_entries(tmp_path, good + b"\n\n" + b'{"episode": 1, "fi')) == [entry(0)]
    with pytest.raises(
        DatasetError, match=r"index.jsonl line 3 is corrupt \(.*\); the episodes before it are intact"
    ):
        list(index_entries(tmp_path, good + b"\n\n{not json\n"))


@pytest.mark.parametrize("file", ["episodes/..\\..\\x.npz", "episodes/../x.npz", "episodes/000/../x.npz"])
def test_a_parent_or_windows_separator_inside_episodes_is_refused(tmp_path: Path, file: str) -> None:
    """ ".." at any depth, and a backslash (a separator on Windows), never lead out of episodes/."""
    with pytest.raises(DatasetError, match="is outside"):
        parse(tmp_path, entry(0), entry(1, file=file))


@pytest.mark.parametrize("file", ["episodes/other.npz", "episodes/sub/other.npz"])
def test_any_plain_file_in_episodes_or_one_sub_folder_down_is_accepted(tmp_path: Path, file: str) -> None:
    """An entry the writer did not name itself (checked the slow way) is still accepted when its
    file is plainly inside episodes/."""
    assert parse(tmp_path, entry(0), entry(1, file=file))[1]["file"] == file


@pytest.mark.parametrize("line", [[1, 2], 5, "x"])
def test_an_index_line_that_is_not_an_object_is_refused_naming_it(tmp_path: Path, line: object) -> None:
    with pytest.raises(DatasetError) as refused:
        parse(tmp_path, entry(0), line)
    assert str(refused.value) == f"{tmp_path / 'index.jsonl'} line 2: expected episode 1, got {line!r}"


def test_a_link_out_of_episodes_is_corrupt_in_the_quick_look(data: Dataset, tmp_path: Path) -> None:
    """An episode file replaced by a link to a file outside episodes/ is never read: the quick
    look calls it corrupt."""
    outside = tmp_path / "elsewhere.npz"
    outside.write_bytes(data.file(1).read_bytes())
    data.file(1).unlink()
    data.file(1).symlink_to(outside)
    assert Dataset(data.root).unreadable() == {"missing": [], "corrupt": [1]}
