"""The dataset reader: episode metadata, whole episodes or chunks (episode, t0:t1), and the
checks behind ``data check``; the store's face, so ``envs.data.store`` also names the format's
types (format.py) and the writer (writer.py).

Readers take nothing on trust: each member's npy header is checked against the index and
metadata before any of its data is inflated, so a crafted file (a zip bomb, a header claiming
millions of frames) is refused rather than unpacked into memory.

Length (about 510 lines): every check a reader makes before trusting a byte sits beside the
read it guards (checked here, mutation-tested as one module).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import stat
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

# The store's face: what callers import from envs.data.store.
from envs.data.format import (
    DEFAULT_FRAMES_PER_BLOCK,
    EPISODE_FILE,
    EPISODE_FOLDER,
    EPISODE_TEMPORARY,
    FORMAT,
    FORMAT_VERSION,
    READ_PIECE,
    DatasetError,
    Episode,
    atomic_write_bytes,
    disk_full_error,
    episode_file,
    file_kind,
    read_metadata,
)
from envs.data.index import EpisodeTable, load_index
from envs.data.writer import DatasetWriter
from envs.spaces import action_space_spec  # callers import it from the store too

__all__ = [
    "DEFAULT_FRAMES_PER_BLOCK",
    "FORMAT",
    "FORMAT_VERSION",
    "Dataset",
    "DatasetError",
    "DatasetWriter",
    "Episode",
    "EpisodeTable",
    "Problem",
    "action_space_spec",
    "atomic_write_bytes",
    "disk_full_error",
    "episode_file",
]


@dataclass(frozen=True)
class Problem:
    """What ``Dataset.check`` found wrong: ``episode`` (None: the dataset as a whole) and one
    line naming the file (``str(problem)``)."""

    episode: int | None
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class _Member:
    """One npy member of an episode file: its header read and checked, its data not yet inflated
    (``stream`` stands at the first data byte)."""

    name: str
    stream: IO[bytes]
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool


def _skip(stream: IO[bytes], size: int) -> None:
    """Inflate and drop ``size`` bytes, a piece at a time."""
    while size > 0:
        got = len(stream.read(min(size, READ_PIECE)))
        if not got:
            raise EOFError("the member ends before its header says")
        size -= got


def _read_into(stream: IO[bytes], buffer: memoryview) -> None:
    """Fill ``buffer`` from ``stream``, a piece at a time (a zip stream's ``readinto`` makes a
    temporary copy of what it reads)."""
    while buffer:
        got = stream.readinto(buffer[:READ_PIECE])  # type: ignore[attr-defined]
        if not got:
            raise EOFError("the member ends before its header says")
        buffer = buffer[got:]


class Dataset:
    """Reads a dataset directory: episode metadata, whole episodes, or chunks (episode, t0:t1).

    Only the committed episodes (those in index.jsonl) are visible. ``episodes[n]`` is episode
    n's index entry (a dict); ``episodes`` holds them as columns (``EpisodeTable``), so a million
    entries open in a moment and take little memory.
    """

    def __init__(self, root: str | os.PathLike[str], max_open_files: int = 64) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(
                f"{self.root} is not a directory: pass a dataset written by `instructcraft collect`"
            )
        self.metadata = read_metadata(self.root)
        self.episodes: EpisodeTable = load_index(self.root, self.metadata["format_version"]).table
        self.frames_per_block = int(self.metadata["frames_per_block"])
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._max_open = max_open_files

    def __len__(self) -> int:
        return len(self.episodes)

    def __getstate__(self) -> dict[str, Any]:
        # Open zip handles do not cross process boundaries (DataLoader workers reopen them).
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    @property
    def num_steps(self) -> int:
        return int(self.episodes.lengths.sum())

    def _length(self, episode: int) -> int:
        return int(self.episodes.lengths[episode])

    def file(self, episode: int) -> Path:
        """Episode ``episode``'s file as the index names it (inside episodes/: the index is
        checked when read); links in its way are not looked at here (``_path`` does)."""
        return self.root / self.episodes.file(episode)

    def _path(self, episode: int) -> Path:
        path = self.file(episode)
        episodes = self.root / "episodes"
        if any(
            link.is_symlink() for link in (path, *path.parents[: len(path.relative_to(episodes).parts) - 1])
        ):
            # A link may point anywhere: follow it only while it stays inside episodes/.
            inside = episodes.resolve()
            if not path.resolve().is_relative_to(inside):
                raise DatasetError(
                    f"{path} (episode {episode}) is a link to {path.resolve()}, outside {inside}; "
                    "refusing to read it"
                )
        return path

    def _error(self, episode: int, error: BaseException) -> DatasetError:
        return DatasetError(
            f"{self._path(episode)} (episode {episode}) is corrupt or truncated: {error}. "
            f"Run `instructcraft data check {self.root}` to list every bad episode."
        )

    def _regular_file(self, episode: int) -> Path:
        """The episode's path once it is known to be a regular file: a FIFO in its place would
        block any read forever, so it is refused from its status alone, never opened."""
        path = self._path(episode)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise DatasetError(f"{path} (episode {episode}) is missing") from None
        except OSError as error:
            raise self._error(episode, error) from None
        if not stat.S_ISREG(mode):
            raise DatasetError(
                f"{path} (episode {episode}) is {file_kind(mode)}, not a regular file; refusing to read it"
            )
        return path

    def _archive(self, episode: int) -> zipfile.ZipFile:
        if not 0 <= episode < len(self.episodes):
            raise IndexError(f"episode {episode} out of range: the dataset has {len(self.episodes)} episodes")
        handle = self._open.get(episode)
        if handle is not None:
            self._open.move_to_end(episode)
            return handle
        path = self._regular_file(episode)
        try:
            handle = zipfile.ZipFile(path)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise self._error(episode, error) from None
        self._open[episode] = handle
        if len(self._open) > self._max_open:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return handle

    def _expected(self, episode: int, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """The shape and dtype the index and metadata.json promise for a member."""
        steps = self._length(episode)
        if name.startswith("images_"):
            first = int(name[len("images_") :]) * self.frames_per_block
            frames = min(self.frames_per_block, steps + 1 - first)
            return (frames, *self.metadata["image_shape"]), np.dtype(np.uint8)
        if name == "actions":
            spec = self.metadata["action_space"]
            shape = (steps,) if spec["type"] == "Discrete" else (steps, len(spec["nvec"]))
            return shape, np.dtype(np.int64)
        return (steps,), np.dtype(np.float32 if name == "rewards" else bool)

    def _member(self, episode: int, name: str) -> _Member:
        """Open a member and check its npy header against the index and metadata.json, inflating
        none of its data: a member larger than they say (a zip bomb, a header claiming millions
        of frames) is refused before anything is allocated for it."""
        archive = self._archive(episode)
        stream = None
        try:
            stream = archive.open(f"{name}.npy")
            version = np.lib.format.read_magic(stream)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{name} has npy format version {version}, which the store never writes")
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(stream)
        except (KeyError, OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as error:
            if stream is not None:
                stream.close()
            raise self._error(episode, error) from None
        expected_shape, expected_dtype = self._expected(episode, name)
        if dtype.hasobject or dtype.newbyteorder("=") != expected_dtype or shape != expected_shape:
            stream.close()
            raise DatasetError(
                f"{self._path(episode)} (episode {episode}): {name} holds {dtype} {shape}, but the index "
                f"and metadata.json say {expected_dtype} {expected_shape}; refusing to read it. "
                f"Run `instructcraft data check {self.root}` to list every bad episode."
            )
        return _Member(name, stream, shape, dtype, fortran_order)

    def _rows(self, episode: int, member: _Member, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` (first axis) of a member as an array of their own, inflating the
        member no further than row ``stop``. A whole member is read to its end, so the archive's
        checksum of it is verified."""
        shape, dtype, stream = member.shape, member.dtype, member.stream
        stop = shape[0] if stop is None else stop
        whole = start == 0 and stop == shape[0]
        try:
            if member.fortran_order and not whole:  # rows are not contiguous: read it all
                return np.array(self._rows(episode, member)[start:stop])
            row_bytes = dtype.itemsize * math.prod(shape[1:])
            _skip(stream, start * row_bytes)
            rows = (stop - start, *shape[1:])
            out = np.empty(rows[::-1] if member.fortran_order else rows, dtype)
            _read_into(stream, memoryview(out.reshape(-1).view(np.uint8)))
            if whole and stream.read(1):
                raise ValueError(f"{member.name} holds more data than its header says")
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise self._error(episode, error) from None
        finally:
            stream.close()
        if member.fortran_order:
            out = out.T
        return out if dtype.isnative else out.astype(dtype.newbyteorder("="))

    def _read(self, episode: int, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._rows(episode, self._member(episode, name), start, stop)

    def images(self, episode: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """uint8 (stop - start, H, W, 3); indices run over the T+1 images of the episode."""
        count = self._length(episode) + 1
        stop = count if stop is None else min(stop, count)
        if not 0 <= start <= stop:
            raise IndexError(f"image range {start}:{stop} invalid for episode {episode} with {count} images")
        if start == stop:
            return np.zeros((0, *self.metadata["image_shape"]), np.uint8)
        block = self.frames_per_block
        parts = []
        for b in range(start // block, (stop - 1) // block + 1):
            member = self._member(episode, f"images_{b:04d}")
            first = b * block
            parts.append(self._rows(episode, member, max(start - first, 0), min(stop - first, block)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def rewards(self, episode: int) -> np.ndarray:
        """float32 (T,): every reward of an episode, without inflating its frames."""
        return self._read(episode, "rewards")

    def chunk(self, episode: int, start: int, stop: int, *, pad: bool = False) -> dict[str, np.ndarray]:
        """Steps ``start:stop`` of an episode: images (the observation each step acted on),
        actions, rewards, terminated, truncated.

        An episode that ends before ``stop`` is clipped like a Python slice: the arrays hold
        ``min(stop, length) - start`` steps, fewer than asked. ``pad=True`` returns exactly
        ``stop - start`` steps instead, zero-filled past the end, plus ``mask`` bool
        (stop - start,), True = a recorded step. ``start`` must be a step of the episode.
        """
        length = self._length(episode)
        if not 0 <= start < min(stop, length):
            raise IndexError(
                f"step range {start}:{stop} invalid for episode {episode} of length {length}: "
                f"start must be in [0, {length}) and below stop"
            )
        end = min(stop, length)
        out = {"images": self.images(episode, start, end)}
        for name in ("actions", "rewards", "terminated", "truncated"):
            out[name] = self._read(episode, name, start, end)
        if pad:
            steps, wanted = end - start, stop - start
            for name, array in out.items():
                padded = np.zeros((wanted, *array.shape[1:]), array.dtype)
                padded[:steps] = array
                out[name] = padded
            out["mask"] = np.arange(wanted) < steps
        return out

    def episode(self, episode: int) -> Episode:
        entry = self.episodes[episode]
        steps = self.chunk(episode, 0, entry["length"]) if entry["length"] else None
        return Episode(
            images=self.images(episode),
            actions=steps["actions"] if steps else np.zeros(0, np.int64),
            rewards=steps["rewards"] if steps else np.zeros(0, np.float32),
            terminated=steps["terminated"] if steps else np.zeros(0, bool),
            truncated=steps["truncated"] if steps else np.zeros(0, bool),
            instruction=entry["instruction"],
            task=entry["task"],
            env_id=entry["env_id"],
            expert=entry.get("expert", ""),
            seed=entry.get("seed"),
            success=entry.get("success", False),
            extra=entry.get("extra", {}),
        )

    def __iter__(self) -> Iterator[Episode]:
        for number in range(len(self)):
            yield self.episode(number)

    def shard(self, rank: int, world_size: int) -> list[int]:
        """The episode indices rank ``rank`` of ``world_size`` reads (round robin)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        return list(range(rank, len(self), world_size))

    def _recorded_bytes(self, episode: int) -> int | None:
        """The size the index records for an episode's file (None: it records none)."""
        size = int(self.episodes.columns["bytes"][episode])
        if size < 0 and episode in self.episodes.rest:
            return self.episodes.rest[episode].get("bytes")
        return None if size < 0 else size

    def unreadable(self) -> dict[str, list[int]]:
        """A quick look, without reading the frames, at which episodes cannot be read:
        ``missing`` (no file) and ``corrupt`` (not a regular file, a size other than recorded, or
        not an npz archive). ``check`` verifies every byte."""
        missing, corrupt = [], []
        for number in range(len(self.episodes)):
            try:
                path = self._path(number)
                status = os.stat(path)
                size = self._recorded_bytes(number)
                if (
                    not stat.S_ISREG(status.st_mode)  # checked first: a FIFO is never opened
                    or (size is not None and status.st_size != size)
                    or not zipfile.is_zipfile(path)
                ):
                    corrupt.append(number)
            except FileNotFoundError:
                missing.append(number)
            except (DatasetError, OSError):
                corrupt.append(number)
        return {"missing": missing, "corrupt": corrupt}

    def summary(self) -> dict[str, Any]:
        """Per-task episode counts, success rates and lengths, and the episodes whose files are
        missing or corrupt (``unreadable``; counted in the totals, as the index lists them)."""
        columns = self.episodes.columns
        task_codes, lengths = columns["task_code"], self.episodes.lengths
        # success column: 0 no key (counted as a failure), 1 null (unknown), 2 false, 3 true
        outcome = columns["success"]
        count = len(self.episodes.strings["task"])
        per_task = {
            "episodes": np.bincount(task_codes, minlength=count),
            "successes": np.bincount(task_codes, outcome == 3, minlength=count),
            "unknown": np.bincount(task_codes, outcome == 1, minlength=count),
            "steps": np.bincount(task_codes, lengths, minlength=count),
        }
        tasks: dict[str, dict[str, Any]] = {}
        for code in dict.fromkeys(task_codes.tolist()):  # in order of first appearance
            row = {key: int(values[code]) for key, values in per_task.items()}
            known = row["episodes"] - row["unknown"]
            # Over the episodes whose outcome is known; None when none is.
            row["success_rate"] = row["successes"] / known if known else None
            row["mean_length"] = row["steps"] / row["episodes"]
            tasks[self.episodes.strings["task"][code]] = row
        sizes = columns["bytes"]  # -1: none recorded; sizes past int64 are kept with the entry
        beyond = sum(other.get("bytes", 0) for other in self.episodes.rest.values())
        return {
            "path": str(self.root),
            "format_version": self.metadata["format_version"],
            "env_id": self.metadata["env_id"],
            "image_shape": self.metadata["image_shape"],
            "action_space": self.metadata["action_space"],
            "episodes": len(self),
            "steps": self.num_steps,
            "bytes": int(sizes[sizes > 0].sum()) + beyond,
            "instructions": len(np.unique(columns["instruction_code"])),
            "tasks": tasks,
            "unreadable": self.unreadable(),
        }

    def check(self) -> list[Problem]:
        """Verify every episode: its checksum, every member against the index and metadata.json
        (shape, dtype), actions inside the action space and finite rewards. Returns one problem
        per bad episode, its message naming the file. Members are read one at a time, never a
        whole episode."""
        problems: list[Problem] = []
        for number in range(len(self.episodes)):
            try:
                self._check_episode(number)
            except DatasetError as error:
                problems.append(Problem(number, str(error)))
        return problems

    def _check_episode(self, number: int) -> None:
        entry = self.episodes[number]
        path = self._regular_file(number)
        if "sha256" in entry:
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    while piece := handle.read(READ_PIECE):
                        digest.update(piece)
            except OSError as error:
                raise self._error(number, error) from None
            if digest.hexdigest() != entry["sha256"]:
                raise DatasetError(
                    f"{path} (episode {number}): checksum mismatch (file changed or truncated)"
                )
        for block in range(math.ceil((entry["length"] + 1) / self.frames_per_block)):
            self._read(number, f"images_{block:04d}")
        self._read(number, "terminated")
        self._read(number, "truncated")
        actions = self._read(number, "actions")
        spec = self.metadata["action_space"]
        counts = spec["n"] if spec["type"] == "Discrete" else np.array(spec["nvec"])
        outside = (actions < 0) | (actions >= counts)
        if outside.any():
            step = int(np.argwhere(outside)[0][0])
            space = (
                f"Discrete({spec['n']})" if spec["type"] == "Discrete" else f"MultiDiscrete({spec['nvec']})"
            )
            raise DatasetError(
                f"{path} (episode {number}): action {actions[step].tolist()} at step {step} is outside "
                f"the dataset's action space {space}"
            )
        rewards = self._read(number, "rewards")
        if not np.isfinite(rewards).all():
            step = int(np.flatnonzero(~np.isfinite(rewards))[0])
            raise DatasetError(
                f"{path} (episode {number}): rewards hold {rewards[step]} at step {step}; "
                "every reward must be finite"
            )

    def _store_files(self) -> tuple[list[Path], list[Path]]:
        """The files in episodes/ (itself and its sub-folders) named as the store names its own,
        and everything else there."""
        episodes = self.root / "episodes"
        ours: list[Path] = []
        others: list[Path] = []
        if not episodes.is_dir():
            return ours, others
        for path in sorted(episodes.iterdir()):
            if EPISODE_FOLDER.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
                for inner in sorted(path.iterdir()):
                    named = EPISODE_FILE.fullmatch(inner.name) or EPISODE_TEMPORARY.fullmatch(inner.name)
                    (ours if named else others).append(inner)
            elif EPISODE_FILE.fullmatch(path.name) or EPISODE_TEMPORARY.fullmatch(path.name):
                ours.append(path)
            else:
                others.append(path)
        return ours, others

    def orphans(self) -> list[Path]:
        """Files the store wrote that no committed episode refers to: left by an interrupted
        write or upgrade, so safe to delete. Files it did not write are ``foreign``, never
        orphans."""
        named = {other["file"] for other in self.episodes.rest.values() if "file" in other}

        def known(path: Path) -> bool:
            relative = path.relative_to(self.root).as_posix()
            if relative in named or not EPISODE_FILE.fullmatch(path.name):
                return relative in named
            number = int(path.name.removesuffix(".npz"))
            return number < len(self.episodes) and self.episodes.file(number) == relative

        return [path for path in self._store_files()[0] if not known(path)]

    def foreign(self) -> list[Path]:
        """Files in episodes/ that the store did not write (left alone by every command)."""
        return self._store_files()[1]

    def close(self) -> None:
        for handle in self._open.values():
            with contextlib.suppress(Exception):
                handle.close()
        self._open.clear()
