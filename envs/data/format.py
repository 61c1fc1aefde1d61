"""The native trajectory dataset's format: its layout, its limits and the crash rules the
reader (store.py) and the writer (writer.py) share.

Layout of a dataset directory (format version 2)::

    metadata.json                  format name + version, env id, image shape, action space
    index.jsonl                    one JSON line per committed episode (the commit log)
    index.snapshot.npz             the index as columns, up to a point of index.jsonl (a cache)
    episodes/000/000000.npz        images_0000, images_0001, ... (blocks of frames), actions,
    episodes/000/000001.npz        rewards, terminated, truncated
    ...
    episodes/001/001000.npz        1,000 episodes a sub-folder (``episode_file``)

Version 1 kept every episode file in episodes/ itself (``episodes/000000.npz``) and had no
snapshot; it still reads, and ``instructcraft data upgrade`` converts it in place (upgrade.py).

An episode of T steps holds T+1 images (the observation before each action, then the final
one) and T actions, rewards and flags. Images are split into blocks of ``frames_per_block``
frames, each a separately deflated member of the npz, so reading a chunk (episode, t0:t1)
inflates only the blocks it touches, and a block only up to the last frame asked for. Frames
are lossless.

Nothing read is taken on trust: metadata.json is bounded (image sides, action counts, block
size) and every index field a reader uses has its type (``read_metadata``, ``index_entries``);
an episode file named by the index lies inside episodes/ (itself or one sub-folder down).

Appending is crash-safe: an episode file is written to a temporary name, fsynced and renamed
(``atomic_write_bytes``), and only then is its line appended to the index and fsynced. A
process killed at any point leaves every earlier episode readable; a torn last index line is
ignored by readers and cut off by the next writer. The snapshot is only ever a cache of
index.jsonl (index.py): missing, stale or unreadable, it is ignored.

Length (about 480 lines): the format's rules (layout, limits, crash rules, index-line
checks) are the one place the reader, the writer, merge and upgrade all import.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.errors import EnvsError

FORMAT = "instructcraft.trajectories"


FORMAT_VERSION = 2  # what new datasets are written in


READABLE_VERSIONS = (1, 2)


# Episode files a sub-folder of episodes/ (version 2): a million episodes is a thousand folders of
# a thousand files, not a million entries in one directory.
EPISODES_PER_FOLDER = 1000


DEFAULT_FRAMES_PER_BLOCK = 32


# The names the store itself writes in episodes/: committed files, their temporaries and (version
# 2) the sub-folders that hold them.
EPISODE_FILE = re.compile(r"\d{6,}\.npz")


EPISODE_TEMPORARY = re.compile(r"\.\d{6,}\.npz\.tmp-\d+")


EPISODE_FOLDER = re.compile(r"\d{3,}")


SNAPSHOT = "index.snapshot.npz"


# What a dataset folder holds besides episodes/ (a folder with anything else is not a dataset).
STORE_FILES = re.compile(
    r"metadata\.json|index\.jsonl|index\.snapshot\.npz|\.lock"
    r"|\.(metadata\.json|index\.jsonl|index\.snapshot\.npz)\.tmp-\d+"
)


def episode_file(number: int, version: int = FORMAT_VERSION) -> str:
    """The path of episode ``number``'s file relative to the dataset folder, as the store writes
    it: ``episodes/000123.npz`` in version 1, ``episodes/000/000123.npz`` in version 2. The one
    place an episode's path is built."""
    name = f"{number:06d}.npz"
    if version == 1:
        return f"episodes/{name}"
    return f"episodes/{number // EPISODES_PER_FOLDER:03d}/{name}"


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


def fsync_dir(path: Path) -> None:
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
    fsync_dir(path.parent)


def _mount_point(path: Path) -> Path:
    """The mount point (the device, to a user) holding ``path``: from the nearest existing folder
    up, since a folder not made yet says nothing. Same as ``policies.files.mount_point``."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def disk_full_error(path: Path, error: OSError, intact: str) -> DatasetError | OSError:
    """A one-line DatasetError for a full disk (or quota); other OS errors are returned as is.
    The words are those of ``policies.files.describe_write_failure``: a full disk reads the
    same whichever layer wrote the file (the two copies cannot share code; change both)."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return error
    return DatasetError(
        f"no space left on device while writing {path}; {intact}. "
        f"Free some space on {_mount_point(path)} (or write to another disk) and try again"
    )


def check_episode_file(root: Path, index_path: Path, number: int, name: Any) -> None:
    """Refuse an index entry whose file is not a plain relative path inside episodes/: the file
    itself (version 1) or one sub-folder down (version 2); never "..", "." or absolute."""
    parts = Path(name).parts if isinstance(name, str) else ()
    if (
        not isinstance(name, str)
        or os.path.isabs(name)
        or "\\" in name
        or len(parts) not in (2, 3)
        or parts[0] != "episodes"
        or any(part in ("..", ".") for part in parts[1:])
        or name != "/".join(parts)  # no "./", "//" or trailing "/" spellings of the same path
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
        raise DatasetError(f"{path} is {file_kind(mode)}, not a regular file; refusing to read it")
    try:
        return path.read_bytes()
    except OSError as error:
        raise DatasetError(f"{path} cannot be read: {error.strerror}") from None


def file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a plain file"


# Index fields a reader relies on: name -> (test, what the message says is expected).
_ENTRY_FIELDS: dict[str, tuple[Any, str]] = {
    "length": (lambda v: _is_int(v) and 0 <= v < 2**62, "a whole number of steps >= 0"),
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


# Lines parsed together: one JSON call for a block is several times faster than one a line.
_BLOCK_LINES = 4096


def index_entries(root: Path, raw: bytes, *, line: int = 1, episode: int = 0) -> Iterator[dict[str, Any]]:
    """Each committed entry of ``raw`` (index.jsonl, or its part after the first ``line - 1``
    lines, which held ``episode`` entries), checked: episode numbers in order, the file inside
    episodes/, every field a reader uses of its type. The committed part of ``raw`` ends at
    ``committed_length(raw)``."""
    path = root / "index.jsonl"
    start = 0
    while True:
        stop = start  # a block of whole lines, never the torn text after the last newline
        for _ in range(_BLOCK_LINES):
            end = raw.find(b"\n", stop)
            if end < 0:
                break
            stop = end + 1
        if stop == start:
            return
        texts = raw[start : stop - 1].split(b"\n")
        start = stop
        numbered = [(line + offset, text) for offset, text in enumerate(texts) if text and not text.isspace()]
        line += len(texts)
        try:
            parsed = json.loads(b"[" + b",".join(text for _, text in numbered) + b"]")
        except ValueError:  # bad JSON or bad UTF-8 somewhere: line by line, to name the line
            parsed = None
        if parsed is None or len(parsed) != len(numbered):
            parsed = [_parse_line(path, number, text) for number, text in numbered]
        for (number, _), entry in zip(numbered, parsed, strict=True):
            if not _plain_entry(entry, episode):
                _check_line(root, path, number, entry, episode)
            episode += 1
            yield entry


def _parse_line(path: Path, number: int, text: bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:  # bad JSON or bad UTF-8
        raise DatasetError(
            f"{path} line {number} is corrupt ({error}); the episodes before it are intact"
        ) from None


def _plain_entry(entry: Any, episode: int) -> bool:
    """Whether an entry is as the store writes it (the common case, checked quickly); any other
    entry goes through ``_check_line``, which names what is wrong, or accepts it."""
    if type(entry) is not dict:
        return False
    get = entry.get
    length, seed, size = get("length"), get("seed"), get("bytes", 0)
    return (
        get("episode") == episode
        and get("file") in (episode_file(episode, 1), episode_file(episode, 2))
        and type(length) is int
        and 0 <= length < 2**62
        and type(get("instruction")) is str
        and type(get("task")) is str
        and type(get("env_id")) is str
        and type(get("expert", "")) is str
        and (seed is None or type(seed) is int)
        and type(get("success", False)) in (bool, type(None))
        and type(size) is int
        and size >= 0
        and type(get("sha256", "")) is str
        and type(get("extra", {})) is dict
    )


def _check_line(root: Path, path: Path, number: int, entry: Any, episode: int) -> None:
    if not isinstance(entry, dict) or entry.get("episode") != episode:
        got = entry.get("episode") if isinstance(entry, dict) else entry
        raise DatasetError(f"{path} line {number}: expected episode {episode}, got {got!r}")
    check_episode_file(root, path, number, entry.get("file"))
    _check_entry(path, number, entry)


def committed_length(raw: bytes) -> int:
    """The bytes of index.jsonl that are committed: text after the final newline is a line torn
    by a killed writer."""
    return raw.rfind(b"\n") + 1


def read_index(root: Path) -> tuple[list[dict[str, Any]], int]:
    """Committed index entries and the byte length of the valid prefix of index.jsonl."""
    raw = _read_regular(root / "index.jsonl", root)
    return list(index_entries(root, raw)), committed_length(raw)


def check_layout(path: Path, metadata: dict[str, Any]) -> None:
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


def read_metadata(root: Path) -> dict[str, Any]:
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
    if not _is_int(version) or version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise DatasetError(
            f"{path}: format_version {_shown(version)} is not supported (this instructcraft reads "
            f"{readable}); a newer instructcraft wrote it: upgrade instructcraft to read it"
        )
    check_layout(path, metadata)
    return metadata


def refuse_foreign_folder(root: Path) -> None:
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
        # A writer killed before its first commit leaves at most temporaries (and their folders).
        for path in sorted((root / "episodes").iterdir()):
            if EPISODE_FOLDER.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
                foreign += [
                    f"episodes/{path.name}/{inner.name}"
                    for inner in sorted(path.iterdir())
                    if not EPISODE_TEMPORARY.fullmatch(inner.name)
                ]
            elif not EPISODE_TEMPORARY.fullmatch(path.name):
                foreign.append(f"episodes/{path.name}")
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DatasetError(
            f"{root} is not empty and is not an instructcraft dataset (it holds {shown}): "
            "write to a new or empty folder, or to an existing dataset to append to it"
        )
