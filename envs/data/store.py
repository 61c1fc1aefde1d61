"""The native trajectory dataset: one compressed file per episode plus an append-only index.

Layout of a dataset directory::

    metadata.json        format name + version, env id, image shape, action space
    index.jsonl          one JSON line per committed episode (the commit log)
    episodes/000000.npz  images_000, images_001, ... (blocks of frames), actions, rewards,
                         terminated, truncated

An episode of T steps holds T+1 images (the observation before each action, then the final
one) and T actions, rewards and flags. Images are split into blocks of ``frames_per_block``
frames, each a separately deflated member of the npz, so reading a chunk (episode, t0:t0+L)
inflates only the blocks it touches, and a block only up to the last frame asked for. Frames
are lossless.

Readers take nothing on trust: metadata.json is bounded (image sides, action counts, block
size), every index field a reader uses has its type, and each member's npy header is checked
against the index and metadata before any of its data is inflated, so a crafted file (a zip
bomb, a header claiming millions of frames) is refused rather than unpacked into memory.

Appending is crash-safe: an episode file is written to a temporary name, fsynced and renamed,
and only then is its line appended to the index and fsynced. A process killed at any point
leaves every earlier episode readable; a torn last index line is ignored by readers and cut
off by the next writer.

The format's one home: the reader, the writer and the checks share its layout and its crash
rules, so they stay in one module rather than split across files that must change together.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import stat
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from envs.errors import EnvsError
from envs.spaces import action_space_spec  # re-exported: callers import it from the store too

FORMAT = "instructcraft.trajectories"
FORMAT_VERSION = 1
DEFAULT_FRAMES_PER_BLOCK = 32
# The names the store itself writes in episodes/: committed files and their temporaries.
EPISODE_FILE = re.compile(r"\d{6,}\.npz")
EPISODE_TEMPORARY = re.compile(r"\.\d{6,}\.npz\.tmp-\d+")
# What a dataset folder holds besides episodes/ (a folder with anything else is not a dataset).
STORE_FILES = re.compile(r"metadata\.json|index\.jsonl|\.lock|\.(metadata\.json|index\.jsonl)\.tmp-\d+")
# Bounds on what metadata.json may claim. Readers size their buffers from it (a batch of frames,
# the policy's action heads), so an absurd value must stop the dataset opening rather than ask
# for hundreds of GiB later. Each bound is far above any env this project knows.
MAX_IMAGE_SIDE = 4096
MAX_ACTION_COMPONENTS = 256
MAX_ACTIONS = 65_536  # actions of a Discrete space, or all components' counts together
MAX_FRAMES_PER_BLOCK = 65_536
# Members are read in pieces of this size: a partial read never holds a second copy of its rows.
READ_PIECE = 4 * 2**20


class DatasetError(EnvsError, RuntimeError):
    """A dataset that cannot be read or written as asked; the message names the file."""


@dataclass(frozen=True)
class Problem:
    """What ``Dataset.check`` found wrong: ``episode`` (None: the dataset as a whole) and one
    line naming the file (``str(problem)``)."""

    episode: int | None
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class Episode:
    """One recorded episode. ``images`` has one more entry than the per-step arrays."""

    images: np.ndarray  # uint8 (T+1, H, W, 3)
    actions: np.ndarray  # int64 (T,) for Discrete, (T, A) for MultiDiscrete
    rewards: np.ndarray  # float32 (T,)
    terminated: np.ndarray  # bool (T,)
    truncated: np.ndarray  # bool (T,)
    instruction: str
    task: str
    env_id: str
    expert: str = ""
    seed: int | None = None
    success: bool | None = False  # None: unknown (an imported dataset without a success signal)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        steps = len(self.actions)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"expected images (T+1, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}"
            )
        if len(self.images) != steps + 1:
            raise ValueError(f"expected {steps + 1} images for {steps} actions, got {len(self.images)}")
        for name in ("rewards", "terminated", "truncated"):
            if len(getattr(self, name)) != steps:
                raise ValueError(f"expected {steps} {name}, got {len(getattr(self, name))}")

    @property
    def length(self) -> int:
        return len(self.actions)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``; a failed
    write (a full disk) leaves no temporary file behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _mount_point(path: Path) -> Path:
    path = path.absolute()
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def disk_full_error(path: Path, error: OSError, intact: str) -> DatasetError | OSError:
    """A one-line DatasetError for a full disk (or quota); other OS errors are returned as is."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return error
    return DatasetError(
        f"no space left on device {_mount_point(path.parent)} while writing {path}; {intact}. "
        "Free some space (or write to another disk) and run the same command again"
    )


def _check_episode_file(root: Path, index_path: Path, number: int, name: Any) -> None:
    """Refuse an index entry whose file is not a plain relative path inside episodes/."""
    parts = Path(name).parts if isinstance(name, str) else ()
    if (
        not isinstance(name, str)
        or os.path.isabs(name)
        or "\\" in name
        or len(parts) != 2
        or parts[0] != "episodes"
        or parts[1] in ("..", ".")
    ):
        raise DatasetError(
            f"{index_path} line {number}: episode file {name!r} is outside {root / 'episodes'}; "
            "refusing to read it (the index was edited or comes from an untrusted source)"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any, limit: int = 80) -> str:
    """A value as JSON, cut to one short line: a crafted value may be megabytes long."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]} ...{text[-1]}"


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return kinds.get(type(value), "a number")


def _read_regular(path: Path, root: Path) -> bytes:
    """The bytes of one of the store's own files; anything but a regular file (a FIFO would block
    the read forever, a directory cannot be read) is refused before it is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing: {root} is not an instructcraft dataset") from None
    except OSError as error:
        raise DatasetError(f"{path} cannot be read: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise DatasetError(f"{path} is {_file_kind(mode)}, not a regular file; refusing to read it")
    try:
        return path.read_bytes()
    except OSError as error:
        raise DatasetError(f"{path} cannot be read: {error.strerror}") from None


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a plain file"


# Index fields a reader relies on: name -> (test, what the message says is expected).
_ENTRY_FIELDS: dict[str, tuple[Any, str]] = {
    "length": (lambda v: _is_int(v) and v >= 0, "a whole number of steps >= 0"),
    "instruction": (lambda v: isinstance(v, str), "a string"),
    "task": (lambda v: isinstance(v, str), "a string"),
    "env_id": (lambda v: isinstance(v, str), "a string"),
}
_OPTIONAL_ENTRY_FIELDS: dict[str, tuple[Any, str]] = {
    "expert": (lambda v: isinstance(v, str), "a string"),
    "seed": (lambda v: v is None or _is_int(v), "an integer or null"),
    "success": (lambda v: v is None or isinstance(v, bool), "true, false or null (unknown)"),
    "bytes": (lambda v: _is_int(v) and v >= 0, "a whole number of bytes >= 0"),
    "sha256": (lambda v: isinstance(v, str), "a hex string"),
    "extra": (lambda v: isinstance(v, dict), "an object"),
}


def _check_entry(path: Path, number: int, entry: dict[str, Any]) -> None:
    for key, (valid, expected) in _ENTRY_FIELDS.items():
        if key not in entry:
            raise DatasetError(f'{path} line {number}: "{key}" is missing (expected {expected})')
        if not valid(entry[key]):
            raise DatasetError(f'{path} line {number}: "{key}" is {_shown(entry[key])}, expected {expected}')
    for key, (valid, expected) in _OPTIONAL_ENTRY_FIELDS.items():
        if key in entry and not valid(entry[key]):
            raise DatasetError(f'{path} line {number}: "{key}" is {_shown(entry[key])}, expected {expected}')


def _read_index(root: Path) -> tuple[list[dict[str, Any]], int]:
    """Committed index entries and the byte length of the valid prefix of index.jsonl."""
    path = root / "index.jsonl"
    raw = _read_regular(path, root)
    entries: list[dict[str, Any]] = []
    valid = 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines)
        if is_last:
            # Text after the final newline is a line torn by a killed writer: not committed.
            break
        if not line.strip():
            valid += len(line) + 1
            continue
        try:
            entry = json.loads(line)
        except ValueError as error:  # bad JSON or bad UTF-8
            raise DatasetError(
                f"{path} line {number} is corrupt ({error}); the episodes before it are intact"
            ) from None
        if not isinstance(entry, dict) or entry.get("episode") != len(entries):
            got = entry.get("episode") if isinstance(entry, dict) else entry
            raise DatasetError(f"{path} line {number}: expected episode {len(entries)}, got {got!r}")
        _check_episode_file(root, path, number, entry.get("file"))
        _check_entry(path, number, entry)
        entries.append(entry)
        valid += len(line) + 1
    return entries, valid


def _check_layout(path: Path, metadata: dict[str, Any]) -> None:
    """Refuse metadata whose env id, image shape, action space or block size is of the wrong
    type or out of bounds, naming the field."""

    def refuse(key: str, expected: str) -> DatasetError:
        return DatasetError(f"{path}: {key} is {_shown(metadata.get(key))}, expected {expected}")

    if not isinstance(metadata.get("env_id"), str):
        raise refuse("env_id", "a string")
    shape = metadata.get("image_shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(_is_int(side) for side in shape)
        and all(1 <= side <= MAX_IMAGE_SIDE for side in shape[:2])
        and shape[2] == 3
    ):
        raise refuse("image_shape", f"[H, W, 3] with H and W whole numbers in [1, {MAX_IMAGE_SIDE}]")
    spec = metadata.get("action_space")
    counts = (
        [spec.get("n")]
        if isinstance(spec, dict) and spec.get("type") == "Discrete"
        else spec.get("nvec")
        if isinstance(spec, dict) and spec.get("type") == "MultiDiscrete"
        else None
    )
    if not (
        isinstance(counts, list)
        and 1 <= len(counts) <= MAX_ACTION_COMPONENTS
        and all(_is_int(count) and count >= 1 for count in counts)
        and sum(counts) <= MAX_ACTIONS
    ):
        raise refuse(
            "action_space",
            f'{{"type": "Discrete", "n": N}} or {{"type": "MultiDiscrete", "nvec": [N, ...]}} with '
            f"1 to {MAX_ACTION_COMPONENTS} components, each N >= 1 and at most {MAX_ACTIONS} actions in all",
        )
    block = metadata.get("frames_per_block")
    if not (_is_int(block) and 1 <= block <= MAX_FRAMES_PER_BLOCK):
        raise refuse("frames_per_block", f"a whole number in [1, {MAX_FRAMES_PER_BLOCK}]")


def _read_metadata(root: Path) -> dict[str, Any]:
    path = root / "metadata.json"
    try:
        metadata = json.loads(_read_regular(path, root))
    except ValueError as error:  # bad JSON or bad UTF-8
        raise DatasetError(f"{path} is corrupt ({error})") from None
    if not isinstance(metadata, dict):
        raise DatasetError(
            f"{path}: expected a JSON object (format, env_id, image_shape, ...), got {_json_kind(metadata)}"
        )
    if metadata.get("format") != FORMAT:
        raise DatasetError(f"{path}: format is {metadata.get('format')!r}, expected {FORMAT!r}")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format_version {_shown(version)} is not supported "
            f"(this instructcraft reads {FORMAT_VERSION})"
        )
    _check_layout(path, metadata)
    return metadata


def _refuse_foreign_folder(root: Path) -> None:
    """A folder that holds anything but a dataset is the user's: never write into it."""
    if not root.exists() or (root / "metadata.json").exists():
        return
    if not root.is_dir():
        raise DatasetError(f"{root} is a file, not a dataset folder: choose another output path")
    foreign = sorted(
        path.name
        for path in root.iterdir()
        if not (path.name == "episodes" and path.is_dir()) and not STORE_FILES.fullmatch(path.name)
    )
    if (root / "episodes").is_dir():
        foreign += sorted(
            f"episodes/{path.name}"
            for path in (root / "episodes").iterdir()
            if not EPISODE_TEMPORARY.fullmatch(path.name)
        )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DatasetError(
            f"{root} is not empty and is not an instructcraft dataset (it holds {shown}): "
            "write to a new or empty folder, or to an existing dataset to append to it"
        )


class DatasetWriter:
    """Appends episodes to a dataset directory (created if missing). One writer at a time.

    Args:
        root: dataset directory.
        env_id: the env the episodes come from.
        image_shape: (H, W, 3) of every frame.
        action_space: the env's action space, or its spec from ``action_space_spec``.
        frames_per_block: frames per deflated block; smaller = cheaper random chunks.
        info: free-form JSON stored in metadata.json (tasks, collection settings).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        env_id: str,
        image_shape: tuple[int, int, int],
        action_space: Any,
        frames_per_block: int = DEFAULT_FRAMES_PER_BLOCK,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        try:
            spec = action_space if isinstance(action_space, dict) else action_space_spec(action_space)
        except ValueError:
            kind = type(action_space).__name__
            raise DatasetError(f"the dataset stores Discrete or MultiDiscrete actions, got {kind}") from None
        # Never write a dataset that readers would refuse to open.
        layout = {"env_id": env_id, "image_shape": [int(side) for side in image_shape], "action_space": spec}
        _check_layout(self.root / "metadata.json", {**layout, "frames_per_block": int(frames_per_block)})
        _refuse_foreign_folder(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "episodes").mkdir(exist_ok=True)
        self._lock = open(self.root / ".lock", "w")  # noqa: SIM115  (held for the writer's life)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise DatasetError(f"{self.root} is being written by another process") from None
        metadata_path = self.root / "metadata.json"
        if metadata_path.exists():
            self.metadata = _read_metadata(self.root)
            expected = {"image_shape": list(image_shape), "action_space": spec}
            for key, value in expected.items():
                if self.metadata[key] != value:
                    self.close()
                    raise DatasetError(
                        f"{metadata_path}: cannot append, {key} is {self.metadata[key]} but the new "
                        f"episodes have {value}; write to a new dataset directory"
                    )
            entries, valid = _read_index(self.root)
            index_path = self.root / "index.jsonl"
            if valid != index_path.stat().st_size:
                with open(index_path, "r+b") as handle:
                    handle.truncate(valid)
            self._count = len(entries)
        else:
            self.metadata = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "env_id": env_id,
                "image_shape": list(image_shape),
                "action_space": spec,
                "frames_per_block": frames_per_block,
                "images_per_episode": "steps + 1",
                "info": info or {},
            }
            atomic_write_bytes(metadata_path, json.dumps(self.metadata, indent=2).encode())
            atomic_write_bytes(self.root / "index.jsonl", b"")
            self._count = 0
        self.frames_per_block = int(self.metadata["frames_per_block"])
        # Unbuffered: a failed append can be cut back to the committed prefix.
        self._index = open(self.root / "index.jsonl", "ab", buffering=0)  # noqa: SIM115

    def __len__(self) -> int:
        return self._count

    def add(self, episode: Episode) -> int:
        """Commit one episode; returns its index."""
        shape = list(episode.images.shape[1:])
        if shape != self.metadata["image_shape"]:
            raise DatasetError(f"expected images {self.metadata['image_shape']}, got {shape}")
        number = self._count
        relative = f"episodes/{number:06d}.npz"
        arrays: dict[str, np.ndarray] = {
            "actions": np.asarray(episode.actions, np.int64),
            "rewards": np.asarray(episode.rewards, np.float32),
            "terminated": np.asarray(episode.terminated, bool),
            "truncated": np.asarray(episode.truncated, bool),
        }
        block = self.frames_per_block
        for b, start in enumerate(range(0, len(episode.images), block)):
            arrays[f"images_{b:04d}"] = np.ascontiguousarray(episode.images[start : start + block])
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        data = buffer.getvalue()
        intact = f"the {number} earlier episodes in {self.root} are intact"
        try:
            atomic_write_bytes(self.root / relative, data)
        except OSError as error:
            raise disk_full_error(self.root / relative, error, intact) from None
        entry = {
            "episode": number,
            "file": relative,
            "length": episode.length,
            "instruction": episode.instruction,
            "task": episode.task,
            "env_id": episode.env_id,
            "expert": episode.expert,
            "seed": episode.seed,
            "success": None if episode.success is None else bool(episode.success),
            "return": float(np.sum(episode.rewards)),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            **({"extra": episode.extra} if episode.extra else {}),
        }
        fd = self._index.fileno()
        committed = os.fstat(fd).st_size
        try:
            line = memoryview((json.dumps(entry) + "\n").encode())
            while line:
                line = line[self._index.write(line) :]
            os.fsync(fd)
        except OSError as error:
            # Undo this episode: the index keeps its committed prefix, the file goes.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, committed)
            with contextlib.suppress(OSError):
                (self.root / relative).unlink()
            raise disk_full_error(self.root / "index.jsonl", error, intact) from None
        self._count += 1
        return number

    def close(self) -> None:
        if getattr(self, "_index", None) is not None and not self._index.closed:
            self._index.close()
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

    Only the committed episodes (those in index.jsonl) are visible.
    """

    def __init__(self, root: str | os.PathLike[str], max_open_files: int = 64) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(
                f"{self.root} is not a directory: pass a dataset written by `instructcraft collect`"
            )
        self.metadata = _read_metadata(self.root)
        self.episodes, _ = _read_index(self.root)
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
        return sum(entry["length"] for entry in self.episodes)

    def _path(self, episode: int) -> Path:
        path = self.root / self.episodes[episode]["file"]
        if path.is_symlink() or path.parent.is_symlink():
            # A link may point anywhere: follow it only while it stays inside episodes/.
            inside = (self.root / "episodes").resolve()
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
                f"{path} (episode {episode}) is {_file_kind(mode)}, not a regular file; refusing to read it"
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
        steps = self.episodes[episode]["length"]
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
        count = self.episodes[episode]["length"] + 1
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
        length = self.episodes[episode]["length"]
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

    def unreadable(self) -> dict[str, list[int]]:
        """A quick look, without reading the frames, at which episodes cannot be read:
        ``missing`` (no file) and ``corrupt`` (not a regular file, a size other than recorded, or
        not an npz archive). ``check`` verifies every byte."""
        missing, corrupt = [], []
        for number, entry in enumerate(self.episodes):
            try:
                path = self._path(number)
                status = os.stat(path)
                if (
                    not stat.S_ISREG(status.st_mode)  # checked first: a FIFO is never opened
                    or ("bytes" in entry and status.st_size != entry["bytes"])
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
        tasks: dict[str, dict[str, Any]] = {}
        for entry in self.episodes:
            row = tasks.setdefault(entry["task"], {"episodes": 0, "successes": 0, "unknown": 0, "steps": 0})
            row["episodes"] += 1
            outcome = entry.get("success", False)
            row["unknown"] += int(outcome is None)
            row["successes"] += int(outcome is True)
            row["steps"] += entry["length"]
        for row in tasks.values():
            known = row["episodes"] - row["unknown"]
            # Over the episodes whose outcome is known; None when none is.
            row["success_rate"] = row["successes"] / known if known else None
            row["mean_length"] = row["steps"] / row["episodes"]
        return {
            "path": str(self.root),
            "format_version": self.metadata["format_version"],
            "env_id": self.metadata["env_id"],
            "image_shape": self.metadata["image_shape"],
            "action_space": self.metadata["action_space"],
            "episodes": len(self),
            "steps": self.num_steps,
            "bytes": sum(entry.get("bytes", 0) for entry in self.episodes),
            "instructions": len({entry["instruction"] for entry in self.episodes}),
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

    def orphans(self) -> list[Path]:
        """Files the store wrote that no committed episode refers to: left by an interrupted
        write, so safe to delete. Files it did not write are ``foreign``, never orphans."""
        known = {entry["file"] for entry in self.episodes}
        if not (self.root / "episodes").is_dir():
            return []
        return [
            path
            for path in sorted((self.root / "episodes").iterdir())
            if f"episodes/{path.name}" not in known
            and (EPISODE_FILE.fullmatch(path.name) or EPISODE_TEMPORARY.fullmatch(path.name))
        ]

    def foreign(self) -> list[Path]:
        """Files in episodes/ that the store did not write (left alone by every command)."""
        if not (self.root / "episodes").is_dir():
            return []
        return [
            path
            for path in sorted((self.root / "episodes").iterdir())
            if not (EPISODE_FILE.fullmatch(path.name) or EPISODE_TEMPORARY.fullmatch(path.name))
        ]

    def close(self) -> None:
        for handle in self._open.values():
            with contextlib.suppress(Exception):
                handle.close()
        self._open.clear()
