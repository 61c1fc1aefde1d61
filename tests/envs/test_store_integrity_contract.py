"""More of what `instructcraft data check` and the quick look (``Dataset.unreadable``) promise,
for datasets the writer did not write byte for byte: a file the system cannot read or find
through a broken folder, the size an index line records (none, zero, past int64), members in
the other npy layouts numpy writes (format 2.0, Fortran order) and one holding more than its
header says. Also: a writer reopened on an index with lines past its snapshot and a torn last
line keeps every committed episode; what reading gives back (every field of an episode, a
zero-step episode, empty and padded ranges, big-endian members, a member cut short).
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import hashlib
import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import store_episode

import envs.data.store as store_module
from envs.data.format import SNAPSHOT
from envs.data.store import Dataset, DatasetError, DatasetWriter, Episode, Problem

SPACE = {"type": "Discrete", "n": 4}
LENGTHS = (6, 9, 3)


def episode(steps: int) -> Episode:
    return store_episode(steps, random_rewards=True)


def writer(root: Path) -> DatasetWriter:
    """Frames in blocks of four, so an episode file holds several image members."""
    return DatasetWriter(
        root, env_id="test-env", image_shape=(8, 8, 3), action_space=SPACE, frames_per_block=4
    )


@pytest.fixture
def data(tmp_path: Path) -> Dataset:
    with writer(tmp_path / "d") as open_writer:
        for steps in LENGTHS:
            open_writer.add(episode(steps))
    return Dataset(tmp_path / "d")


def edit_entry(data: Dataset, number: int, **changes: object) -> None:
    """Episode ``number``'s index line with ``changes`` (a value of ``...`` drops the key), the
    snapshot dropped so the index is read again."""
    index = data.root / "index.jsonl"
    lines = index.read_text().splitlines()
    entry = json.loads(lines[number])
    for key, value in changes.items():
        if value is ...:
            entry.pop(key, None)
        else:
            entry[key] = value
    lines[number] = json.dumps(entry)
    index.write_text("\n".join(lines) + "\n")
    (data.root / SNAPSHOT).unlink(missing_ok=True)


def archive(members: dict[str, bytes]) -> bytes:
    """An npz archive of already serialised npy members."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for name, raw in members.items():
            out.writestr(f"{name}.npy", raw)
    return buffer.getvalue()


def npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


def replace_file(data: Dataset, number: int, raw: bytes) -> Path:
    """Episode ``number``'s file replaced by ``raw``, its size and checksum recorded as the
    writer records them."""
    path = data.file(number)
    path.write_bytes(raw)
    edit_entry(data, number, bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    return path


def stored(data: Dataset, number: int) -> dict[str, np.ndarray]:
    with np.load(data.file(number)) as files:
        return {name: files[name] for name in files.files}


def same_episode(read: Episode, written: Episode) -> bool:
    return all(
        np.array_equal(getattr(read, name), getattr(written, name))
        for name in ("images", "actions", "rewards", "terminated", "truncated")
    )


# -- files the system cannot read ---------------------------------------------------------------


def test_an_episode_folder_replaced_by_a_file_reports_every_episode_in_it(data: Dataset) -> None:
    """A version-2 sub-folder of episodes/ that became a plain file: every episode in it is
    reported once by `data check`, naming its file and the system's error, and counted corrupt
    (not missing) by the quick look; nothing raises."""
    folder = data.file(0).parent
    shutil.rmtree(folder)
    folder.write_bytes(b"not a folder")
    fresh = Dataset(data.root)
    problems = fresh.check()
    assert [problem.episode for problem in problems] == [0, 1, 2]
    for problem in problems:
        path = data.file(problem.episode)
        assert str(problem) == (
            f"{path} (episode {problem.episode}) is corrupt or truncated: [Errno {errno.ENOTDIR}] "
            f"Not a directory: {str(path)!r}. "
            f"Run `instructcraft data check {data.root}` to list every bad episode."
        )
    assert fresh.unreadable() == {"missing": [], "corrupt": [0, 1, 2]}


def test_a_read_error_while_checksumming_is_that_episodes_problem(
    data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error reading one episode's file for its checksum (a failing disk) is reported for
    that episode, naming the file and the error, and the check goes on to the next episodes."""
    bad = data.file(1)

    def failing_open(file: object, *args: object, **kwargs: object) -> object:
        if Path(str(file)) == bad:
            raise OSError(errno.EIO, "Input/output error")
        return builtins.open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(store_module, "open", failing_open, raising=False)
    assert Dataset(data.root).check() == [
        Problem(
            1,
            f"{bad} (episode 1) is corrupt or truncated: [Errno {errno.EIO}] Input/output error. "
            f"Run `instructcraft data check {data.root}` to list every bad episode.",
        )
    ]


# -- the size an index line records -------------------------------------------------------------


def test_an_entry_without_a_size_is_not_compared(data: Dataset) -> None:
    """An index line that records no size (a hand-made or older index) leaves the size out of
    the quick look: the episode is not corrupt there, and `data check` still finds it clean."""
    edit_entry(data, 1, bytes=...)
    fresh = Dataset(data.root)
    assert fresh.unreadable() == {"missing": [], "corrupt": []}
    assert fresh.check() == []


@pytest.mark.parametrize(("size", "extra"), [(0, None), (0, {"dagger_round": 1, "beta": 0.5}), (2**64, None)])
def test_a_recorded_size_of_zero_or_past_int64_is_compared(data: Dataset, size: int, extra: object) -> None:
    """A size of 0 is a size (not "none recorded"), also on an entry that carries fields of its
    own (a DAgger rollout's ``extra``), and one too large for the index's int64 column is kept
    with the entry: either way the file's real size differs, so the quick look calls the
    episode corrupt."""
    edit_entry(data, 2, bytes=size, **({} if extra is None else {"extra": extra}))
    assert Dataset(data.root).unreadable() == {"missing": [], "corrupt": [2]}


# -- members in the other layouts numpy writes ---------------------------------------------------


def test_members_in_npy_format_2_read_and_check_clean(data: Dataset) -> None:
    """numpy writes npy format 2.0 for headers over 64 KiB: such members are read as written
    (the header read the 2.0 way), and `data check` finds nothing to report."""
    written = data.episode(1)
    raw = archive({name: npy(array, (2, 0)) for name, array in stored(data, 1).items()})
    replace_file(data, 1, raw)
    fresh = Dataset(data.root)
    assert fresh.check() == []
    assert same_episode(fresh.episode(1), written)


def test_a_member_in_an_npy_format_the_store_never_writes_is_named(data: Dataset) -> None:
    """npy format 3.0 (never written by the store): `data check` names the member and version."""
    members = {name: npy(array) for name, array in stored(data, 0).items()}
    members["actions"] = npy(stored(data, 0)["actions"], (3, 0))
    path = replace_file(data, 0, archive(members))
    assert [str(problem) for problem in Dataset(data.root).check()] == [
        f"{path} (episode 0) is corrupt or truncated: actions has npy format version (3, 0), which the "
        f"store never writes. Run `instructcraft data check {data.root}` to list every bad episode."
    ]


def test_members_in_fortran_order_read_as_written(data: Dataset) -> None:
    """A member stored column-major (Fortran order) is read back with the values written, whole
    or in part, and checks clean."""
    written = data.episode(1)
    raw = archive({name: npy(np.asfortranarray(array)) for name, array in stored(data, 1).items()})
    replace_file(data, 1, raw)
    fresh = Dataset(data.root)
    assert fresh.check() == []
    assert same_episode(fresh.episode(1), written)
    assert np.array_equal(fresh.images(1, 2, 7), written.images[2:7])


def test_a_member_with_more_data_than_its_header_says_is_named(data: Dataset) -> None:
    """Bytes past the data an npy header promises: the whole-member read sees them, and
    `data check` reports the episode naming that member."""
    members = {name: npy(array) for name, array in stored(data, 2).items()}
    members["rewards"] += b"\0" * 4
    path = replace_file(data, 2, archive(members))
    assert [str(problem) for problem in Dataset(data.root).check()] == [
        f"{path} (episode 2) is corrupt or truncated: rewards holds more data than its header says. "
        f"Run `instructcraft data check {data.root}` to list every bad episode."
    ]


# -- appending after a writer that was killed ----------------------------------------------------


def test_appending_after_a_torn_index_line_keeps_every_committed_episode(data: Dataset) -> None:
    """An index with no snapshot of its lines (lost, or never saved by a killed writer) and the
    torn start of a line a killed writer left: a writer reopened on it cuts only the torn text,
    so the committed episodes stay and the new one follows them."""
    (data.root / SNAPSHOT).unlink()
    index = data.root / "index.jsonl"
    committed = index.read_bytes()
    index.write_bytes(committed + b'{"episode": 3, "fi')
    with writer(data.root) as reopened:
        assert len(reopened) == 3
        assert reopened.add(episode(5)) == 3
    assert index.read_bytes().startswith(committed)
    fresh = Dataset(data.root)
    assert [fresh.episodes[number]["length"] for number in range(len(fresh))] == [*LENGTHS, 5]
    assert same_episode(fresh.episode(3), episode(5))
    assert fresh.check() == []


# -- reading back -------------------------------------------------------------------------------


def test_an_episode_reads_back_every_field_as_written(tmp_path: Path) -> None:
    """Arrays and every recorded field: env id, expert, seed, success and ``extra`` (DAgger's
    round and executed actions live there)."""
    written = dataclasses.replace(
        episode(6), expert="scripted", success=True, extra={"dagger_round": 2, "executed_actions": [1, 0]}
    )
    with writer(tmp_path / "d") as open_writer:
        open_writer.add(written)
    read = Dataset(tmp_path / "d").episode(0)
    assert same_episode(read, written)
    assert (read.instruction, read.task, read.env_id, read.expert, read.seed) == (
        "go",
        "go",
        "test-env",
        "scripted",
        6,
    )
    assert read.success is True and read.extra == {"dagger_round": 2, "executed_actions": [1, 0]}


def test_an_entry_without_expert_success_or_extra_reads_with_the_defaults(data: Dataset) -> None:
    """A hand-made or imported index line without ``expert``, ``success`` or ``extra``: no
    expert (""), not a success (False) and no extra fields ({})."""
    edit_entry(data, 0, expert=..., success=..., extra=...)
    read = Dataset(data.root).episode(0)
    assert (read.expert, read.success, read.extra) == ("", False, {})


def test_an_episode_of_zero_steps_reads_back_with_empty_typed_arrays(tmp_path: Path) -> None:
    """An episode that ended at reset (one image, no step): empty actions (int64), rewards
    (float32) and flags (bool), as a step-by-step reader expects."""
    image = np.full((1, 8, 8, 3), 7, np.uint8)
    empty = Episode(
        images=image,
        actions=np.zeros(0, np.int64),
        rewards=np.zeros(0, np.float32),
        terminated=np.zeros(0, bool),
        truncated=np.zeros(0, bool),
        instruction="go",
        task="go",
        env_id="test-env",
    )
    with writer(tmp_path / "d") as open_writer:
        open_writer.add(empty)
    read = Dataset(tmp_path / "d").episode(0)
    assert np.array_equal(read.images, image) and read.length == 0
    for name, dtype in (
        ("actions", np.int64),
        ("rewards", np.float32),
        ("terminated", bool),
        ("truncated", bool),
    ):
        array = getattr(read, name)
        assert array.shape == (0,) and array.dtype == dtype, name


def test_an_empty_image_range_is_empty_and_a_reversed_one_is_refused(data: Dataset) -> None:
    """``images(e, k, k)`` is no frame (uint8, the image shape); a range that runs backwards is
    an IndexError naming the range, the episode and its image count."""
    empty = data.images(0, 3, 3)
    assert empty.shape == (0, 8, 8, 3) and empty.dtype == np.uint8
    with pytest.raises(IndexError, match=r"^image range 5:2 invalid for episode 0 with 7 images$"):
        data.images(0, 5, 2)


def test_a_padded_chunk_keeps_each_field_s_dtype(data: Dataset) -> None:
    """Padding past an episode's end is zeros of each field's own dtype, so a batch of padded
    and unpadded chunks stacks without changing type."""
    padded = data.chunk(2, 1, 6, pad=True)
    whole = data.chunk(2, 0, 3)
    for name in ("images", "actions", "rewards", "terminated", "truncated"):
        assert padded[name].dtype == whole[name].dtype and len(padded[name]) == 5, name


def test_big_endian_members_read_as_native_values(data: Dataset) -> None:
    """Members stored big-endian (written on another machine or by another tool) read back with
    the values written, in native byte order."""
    written = data.episode(1)
    members = {
        name: npy(array.astype(array.dtype.newbyteorder(">"))) for name, array in stored(data, 1).items()
    }
    replace_file(data, 1, archive(members))
    read = Dataset(data.root).episode(1)
    assert same_episode(read, written)
    assert read.rewards.dtype == np.float32 and read.rewards.dtype.isnative and read.actions.dtype.isnative


@pytest.mark.parametrize("fortran", [False, True])
def test_a_frame_block_cut_short_is_refused_when_read(data: Dataset, fortran: bool) -> None:
    """An image block with less data than its header promises (C or Fortran order): reading
    the episode, or only some of the block's frames, raises the store's error naming the file
    and episode, never returns the missing frames as garbage."""
    members = {name: npy(array) for name, array in stored(data, 0).items()}
    block = stored(data, 0)["images_0001"]
    full = npy(np.asfortranarray(block) if fortran else block)
    members["images_0001"] = full[: len(full) - block[0].nbytes - 5]
    path = replace_file(data, 0, archive(members))
    fresh = Dataset(data.root)
    for read in (lambda: fresh.episode(0), lambda: fresh.images(0, 4, 6)):
        with pytest.raises(
            DatasetError, match=rf"^{re.escape(str(path))} \(episode 0\) is corrupt or truncated: "
        ):
            read()


# -- the index's fast path ------------------------------------------------------------------------


def test_every_entry_the_writer_can_write_takes_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a dataset parses its index a block at a time and checks each line with one quick
    test; only a line the writer would not write goes through the slow, line-naming check. Every
    shape of line the writer writes (either file layout, seed and outcome known or not, extras,
    no optional field at all, a zero-step episode, the longest length allowed) passes the quick
    test, so a large index opens at the fast path's speed."""
    import envs.data.format as format_module

    def slow(*args: object) -> None:
        raise AssertionError(f"took the slow check: {args[3]!r}")

    monkeypatch.setattr(format_module, "_check_line", slow)
    base = {"instruction": "go", "task": "go", "env_id": "test-env"}
    entries = [
        {"episode": 0, "file": "episodes/000/000000.npz", "length": 3, **base, "expert": "scripted", "seed": 3,
         "success": True, "return": 1.0, "bytes": 10, "sha256": "ab" * 32},
        {"episode": 1, "file": "episodes/000001.npz", "length": 2, **base, "seed": None, "success": None,
         "extra": {"dagger_round": 1}},
        {"episode": 2, "file": "episodes/000/000002.npz", "length": 1, **base},
        {"episode": 3, "file": "episodes/000/000003.npz", "length": 0, **base, "expert": "", "success": False,
         "bytes": 0},
        {"episode": 4, "file": "episodes/000/000004.npz", "length": 2**62 - 1, **base},
    ]  # fmt: skip
    raw = b"".join(json.dumps(item).encode() + b"\n" for item in entries)
    assert list(format_module.index_entries(tmp_path, raw)) == entries


# -- the writer's commit ------------------------------------------------------------------------


def test_the_writer_stores_each_array_in_the_store_s_dtype(tmp_path: Path) -> None:
    """Actions given as int32, rewards as float64 and flags as 0/1 integers are stored as int64,
    float32 and bool, so the episode reads back and checks clean; an outcome of None is kept as
    unknown and the index records the episode's return."""
    given = episode(5)
    odd = dataclasses.replace(
        given,
        actions=given.actions.astype(np.int32),
        rewards=given.rewards.astype(np.float64),
        terminated=given.terminated.astype(np.uint8),
        truncated=given.truncated.astype(np.uint8),
        success=None,
    )
    with writer(tmp_path / "d") as open_writer:
        open_writer.add(odd)
    data = Dataset(tmp_path / "d")
    assert data.check() == []
    read = data.episode(0)
    assert same_episode(read, given) and read.success is None
    assert data.episodes[0]["return"] == pytest.approx(float(given.rewards.sum()))


def test_an_episode_of_another_image_shape_is_refused_naming_both(tmp_path: Path) -> None:
    with writer(tmp_path / "d") as open_writer:
        small = dataclasses.replace(episode(2), images=np.zeros((3, 4, 4, 3), np.uint8))
        with pytest.raises(DatasetError, match=r"^expected images \[8, 8, 3\], got \[4, 4, 3\]$"):
            open_writer.add(small)


def full_disk() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_an_episode_file_keeps_the_dataset(
    data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No room for the next episode's file: a one-line error names the file and says the earlier
    episodes are intact; they are, and the dataset checks clean."""
    import envs.data.writer as writer_module

    def no_room(path: Path, raw: bytes) -> None:
        raise full_disk()

    monkeypatch.setattr(writer_module, "atomic_write_bytes", no_room)
    with writer(data.root) as open_writer, pytest.raises(DatasetError) as refused:
        open_writer.add(episode(4))
    assert str(refused.value).startswith(
        f"no space left on device while writing {data.root / 'episodes/000/000003.npz'}; "
        f"the 3 earlier episodes in {data.root} are intact. Free some space on "
    )
    monkeypatch.undo()
    fresh = Dataset(data.root)
    assert len(fresh) == 3 and fresh.check() == []


class _FullAfter:
    """The writer's index file, which takes ``room`` bytes of the next line, then is full."""

    def __init__(self, real: io.RawIOBase, room: int) -> None:
        self.real, self.room = real, room

    def fileno(self) -> int:
        return self.real.fileno()

    def write(self, line: memoryview) -> int:
        if self.room <= 0:
            raise full_disk()
        written = self.real.write(line[: self.room])
        self.room -= written
        return written


def test_a_full_disk_while_committing_the_index_line_undoes_the_episode(data: Dataset) -> None:
    """The disk fills up part way through the episode's index line: the part is cut off, the
    episode's file is removed, the error names the index and says the earlier episodes are
    intact; the same writer then commits the next episode in that place."""
    index = data.root / "index.jsonl"
    with writer(data.root) as open_writer:
        before = index.read_bytes()
        real = open_writer._index
        open_writer._index = _FullAfter(real, 10)  # type: ignore[assignment]
        with pytest.raises(DatasetError) as refused:
            open_writer.add(episode(4))
        open_writer._index = real
        assert str(refused.value).startswith(
            f"no space left on device while writing {index}; the 3 earlier episodes in {data.root} are intact."
        )
        assert index.read_bytes() == before
        assert not (data.root / "episodes/000/000003.npz").exists()
        assert open_writer.add(episode(5)) == 3
    fresh = Dataset(data.root)
    assert fresh.check() == [] and same_episode(fresh.episode(3), episode(5))


# -- the index, block by block ------------------------------------------------------------------


def plain(number: int) -> dict:
    return {"episode": number, "file": f"episodes/{number // 1000:03d}/{number:06d}.npz", "length": 1,
            "instruction": "go", "task": "go", "env_id": "test-env"}  # fmt: skip


def test_an_index_longer_than_a_parsing_block_is_read_whole_and_lines_are_counted_across_blocks(
    tmp_path: Path,
) -> None:
    """The index is parsed 4096 lines at a time: 5000 lines give 5000 entries, and a bad line in
    the second block is named by its own line number."""
    from envs.data.format import index_entries

    lines = [json.dumps(plain(n)).encode() for n in range(5000)]
    assert list(index_entries(tmp_path, b"\n".join(lines) + b"\n")) == [plain(n) for n in range(5000)]
    lines[4499] = json.dumps({**plain(4499), "length": -1}).encode()
    with pytest.raises(DatasetError, match=r"index\.jsonl line 4500: \"length\" is -1"):
        list(index_entries(tmp_path, b"\n".join(lines) + b"\n"))


def test_a_blank_first_line_is_skipped_and_two_objects_on_one_line_are_refused(tmp_path: Path) -> None:
    """Blank lines anywhere are skipped, the first included; a line holding two entries (a
    comma-joined edit) is named as not JSON, never read as two episodes."""
    from envs.data.format import index_entries

    one, two = json.dumps(plain(0)).encode(), json.dumps(plain(1)).encode()
    assert list(index_entries(tmp_path, b"\n" + one + b"\n" + two + b"\n")) == [plain(0), plain(1)]
    with pytest.raises(DatasetError, match=r"index\.jsonl line 1 is corrupt"):
        list(index_entries(tmp_path, one + b", " + two + b"\n"))


@pytest.mark.parametrize("failing", ["truncate", "unlink"])
def test_a_failed_clean_up_after_a_failed_index_line_still_names_the_full_disk(
    data: Dataset, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The disk fills up part way through an index line and one step of undoing the episode fails
    too (cutting the index back, or removing the episode's file): the user still gets the store's
    one-line error naming the index and the full disk, not the clean-up's own error, and the other
    step is still done."""
    import os

    index = data.root / "index.jsonl"
    new_file = data.root / "episodes/000/000003.npz"
    real_unlink = Path.unlink

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def no_unlink(path: Path, missing_ok: bool = False) -> None:
        if path == new_file:
            raise OSError(errno.EIO, "Input/output error")
        real_unlink(path, missing_ok=missing_ok)

    with writer(data.root) as open_writer:
        before = index.read_bytes()
        real = open_writer._index
        open_writer._index = _FullAfter(real, 10)  # type: ignore[assignment]
        with monkeypatch.context() as patch:
            if failing == "truncate":
                patch.setattr(os, "ftruncate", no_truncate)
            else:
                patch.setattr(Path, "unlink", no_unlink)
            with pytest.raises(DatasetError) as refused:
                open_writer.add(episode(4))
        open_writer._index = real
    assert str(refused.value).startswith(
        f"no space left on device while writing {index}; the 3 earlier episodes in {data.root} are intact."
    )
    if failing == "truncate":
        assert not new_file.exists()
        assert index.read_bytes().startswith(before) and len(index.read_bytes()) == len(before) + 10
    else:
        assert new_file.exists() and index.read_bytes() == before
    assert len(Dataset(data.root)) == 3


# -- a dataset written before format version 2 --------------------------------------------------

VERSION_1 = Path(__file__).parent / "fixtures" / "dataset_v1"


def test_appending_to_a_version_1_dataset_writes_the_version_1_layout(tmp_path: Path) -> None:
    """A version-1 dataset (every episode file directly in episodes/) keeps its own layout when
    appended to, until ``data upgrade``: the new episode's file lies where a version-1 reader
    looks for it, its index line names it there, and the dataset checks clean."""
    root = Path(shutil.copytree(VERSION_1, tmp_path / "v1"))
    rng = np.random.default_rng(0)
    new = Episode(
        images=rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8),
        actions=rng.integers(0, 7, 5),
        rewards=rng.random(5).astype(np.float32),
        terminated=np.arange(5) == 4,
        truncated=np.zeros(5, bool),
        instruction="go to the red ball",
        task="GoToRedBall",
        env_id="instructcraft/BabyAI-GoToRedBall-v0",
        seed=9,
    )
    space = {"type": "Discrete", "n": 7}
    with DatasetWriter(root, env_id=new.env_id, image_shape=(64, 64, 3), action_space=space) as append:
        assert append.add(new) == 3
    assert (root / "episodes" / "000003.npz").is_file()
    assert sorted(p.name for p in (root / "episodes").iterdir() if p.is_dir()) == []
    dataset = Dataset(root)
    assert dataset.metadata["format_version"] == 1
    assert [entry["file"] for entry in dataset.episodes] == [f"episodes/{n:06d}.npz" for n in range(4)]
    assert dataset.check() == [] and same_episode(dataset.episode(3), new)
