"""The episode index in memory (``EpisodeTable``) and its snapshot on disk.

index.jsonl is the commit log (format.py). Parsed into a dict per entry, a million episodes take
gigabytes and many seconds; ``EpisodeTable`` keeps each field as a column (numbers in numpy
arrays, repeated strings as codes into a list of the distinct ones) and builds an entry's dict
only when one is asked for. Anything that fits no column (``extra``, a field the store does not
know) is kept per entry, as it was read.

A version-2 dataset also keeps ``index.snapshot.npz``: the table of a prefix of index.jsonl, with
the prefix's byte length and CRC-32. The writer saves it when it closes; opening loads the
columns and parses only the lines appended after the prefix. It is only a cache: a missing,
stale (the prefix changed) or unreadable snapshot is ignored and the whole index parsed, and a
snapshot's columns are checked as index lines are.

Length (about 470 lines): the table's columns and the snapshot written from them must agree
field by field, so both live here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from envs.data.format import (
    READ_PIECE,
    SNAPSHOT,
    DatasetError,
    _check_entry,
    _read_regular,
    atomic_write_bytes,
    check_episode_file,
    committed_length,
    episode_file,
    index_entries,
)

# The order of an entry's keys, as the writer writes them.
ORDER = (
    "episode",
    "file",
    "length",
    "instruction",
    "task",
    "env_id",
    "expert",
    "seed",
    "success",
    "return",
    "bytes",
    "sha256",
)


_KNOWN = frozenset(ORDER)


STRINGS = ("instruction", "task", "env_id", "expert")  # code -1: the entry has no such key


_SUCCESS = {None: 1, False: 2, True: 3}  # 0: no "success" key


_SEED_ABSENT, _SEED_NULL, _SEED_VALUE = 0, 1, 2


_INT64 = 2**63


_MISSING = object()


SNAPSHOT_VERSION = 1


class EpisodeTable(Sequence[dict[str, Any]]):
    """Every committed index entry, as columns; ``table[n]`` is entry n's dict (a new one each
    time: changing it changes nothing stored). ``lengths`` is the steps of every episode."""

    def __init__(
        self,
        version: int,
        columns: dict[str, np.ndarray],
        strings: dict[str, list[str]],
        rest: dict[int, dict],
    ) -> None:
        self.version = version
        self.columns = columns
        self.strings = strings
        self.rest = rest  # episode -> the fields no column holds (extra, unknown keys, odd values)

    @classmethod
    def from_entries(cls, version: int, entries: Iterable[dict[str, Any]], first: int = 0) -> EpisodeTable:
        """The table of ``entries`` (checked index entries numbered from ``first``)."""
        length, seed, seed_state, success, returns, has_return, sizes, hexes = ([] for _ in range(8))
        texts: dict[str, list[str | None]] = {name: [] for name in STRINGS}
        rest: dict[int, dict] = {}
        for offset, entry in enumerate(entries):
            number = first + offset
            unknown = entry.keys() - _KNOWN
            other = {key: entry[key] for key in entry if key in unknown} if unknown else {}
            if entry.get("file") != episode_file(number, version):
                other["file"] = entry.get("file")
            length.append(entry["length"])
            for name in STRINGS:
                texts[name].append(entry.get(name))
            value = entry.get("seed", _MISSING)
            if value is _MISSING:
                seed_state.append(_SEED_ABSENT)
                seed.append(0)
            elif value is None or -_INT64 <= value < _INT64:
                seed_state.append(_SEED_NULL if value is None else _SEED_VALUE)
                seed.append(0 if value is None else value)
            else:
                seed_state.append(_SEED_ABSENT)
                seed.append(0)
                other["seed"] = value
            success.append(_SUCCESS[entry["success"]] if "success" in entry else 0)
            value = entry.get("return")
            has_return.append(type(value) is float)
            returns.append(value if type(value) is float else 0.0)
            if "return" in entry and type(value) is not float:
                other["return"] = value
            value = entry.get("bytes", -1)
            if value >= _INT64:
                other["bytes"], value = value, -1
            sizes.append(value)
            hexes.append(entry.get("sha256"))
            if other:
                rest[number] = other
        digests, has_digest = _digests(hexes)
        for number, (value, present) in enumerate(zip(hexes, has_digest, strict=True), start=first):
            if value is not None and not present:  # not 64 lowercase hex digits: kept as written
                rest.setdefault(number, {})["sha256"] = value
        strings, codes = {}, {}
        for name in STRINGS:
            strings[name] = [value for value in dict.fromkeys(texts[name]) if value is not None]
            code = {value: number for number, value in enumerate(strings[name])}
            code[None] = -1  # type: ignore[index]
            codes[name] = np.array([code[value] for value in texts[name]], np.int32)
        columns = {
            "length": np.array(length, np.int64),
            "seed": np.array(seed, np.int64),
            "seed_state": np.array(seed_state, np.int8),
            "success": np.array(success, np.int8),
            "return": np.array(returns, np.float64),
            "has_return": np.array(has_return, bool),
            "bytes": np.array(sizes, np.int64),
            "sha256": digests,
            "has_sha256": has_digest,
            **{f"{name}_code": codes[name] for name in STRINGS},
        }
        return cls(version, columns, strings, rest)

    def __len__(self) -> int:
        return len(self.columns["length"])

    @property
    def lengths(self) -> np.ndarray:
        """int64 (N,): the steps of each episode."""
        return self.columns["length"]

    def file(self, number: int) -> str:
        """Episode ``number``'s file, relative to the dataset folder, as its index line names it."""
        other = self.rest.get(number)
        return other["file"] if other and "file" in other else episode_file(number, self.version)

    def string(self, name: str, number: int) -> str | None:
        code = int(self.columns[f"{name}_code"][number])
        return None if code < 0 else self.strings[name][code]

    @overload
    def __getitem__(self, number: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, number: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, number: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(number, slice):
            return [self[n] for n in range(*number.indices(len(self)))]
        count = len(self)
        if not -count <= number < count:
            raise IndexError(f"episode {number} out of range: the index has {count} episodes")
        number = int(number) % count  # a numpy integer too; the entry holds a plain int
        c = self.columns
        other = self.rest.get(number, {})
        entry: dict[str, Any] = {
            "episode": number,
            "file": self.file(number),
            "length": int(c["length"][number]),
        }
        for name in STRINGS:
            value = self.string(name, number)
            if value is not None:
                entry[name] = value
        state = c["seed_state"][number]
        if state != _SEED_ABSENT:
            entry["seed"] = None if state == _SEED_NULL else int(c["seed"][number])
        if c["success"][number]:
            entry["success"] = (None, False, True)[c["success"][number] - 1]
        if c["has_return"][number]:
            entry["return"] = float(c["return"][number])
        if c["bytes"][number] >= 0:
            entry["bytes"] = int(c["bytes"][number])
        if c["has_sha256"][number]:
            entry["sha256"] = c["sha256"][number].tobytes().hex()
        entry.update(other)
        return {key: entry[key] for key in (*ORDER, *other) if key in entry}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for number in range(len(self)):
            yield self[number]

    def concat(self, other: EpisodeTable) -> EpisodeTable:
        """This table followed by ``other`` (whose entries are numbered after this one's)."""
        strings, columns = {}, {}
        for name in STRINGS:
            merged = {value: code for code, value in enumerate(self.strings[name])}
            remap = np.array([merged.setdefault(value, len(merged)) for value in other.strings[name]] + [-1])
            strings[name] = list(merged)
            columns[f"{name}_code"] = np.concatenate(
                [self.columns[f"{name}_code"], remap[other.columns[f"{name}_code"]].astype(np.int32)]
            )
        for key, column in self.columns.items():
            if key not in columns:
                columns[key] = np.concatenate([column, other.columns[key]])
        return EpisodeTable(self.version, columns, strings, {**self.rest, **other.rest})


def _digests(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32) and bool (N,): each sha256 as its bytes where it is written as the writer
    writes it (64 lowercase hex digits), all at once when every one is (the common case)."""
    joined = "".join(value for value in values if type(value) is str and len(value) == 64)
    if len(joined) == 64 * len(values) and joined == joined.lower():
        with contextlib.suppress(ValueError):
            return np.frombuffer(bytes.fromhex(joined), np.uint8).reshape(-1, 32).copy(), np.ones(
                len(values), bool
            )
    digests = [_digest(value) for value in values]
    flat = b"".join(digest or bytes(32) for digest in digests)
    present = np.array([digest is not None for digest in digests], bool)
    return np.frombuffer(flat, np.uint8).reshape(-1, 32).copy(), present


def _digest(value: Any) -> bytes | None:
    """A sha256 as its 32 bytes when it is written as the writer writes it (64 lowercase hex)."""
    if not isinstance(value, str) or len(value) != 64 or value != value.lower():
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _regular_size(path: Path) -> int | None:
    """The size of ``path`` when it is a regular file (a FIFO is never opened), else None."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


@dataclass
class IndexState:
    """What is committed in index.jsonl: its entries, and its committed part's byte length,
    CRC-32 and line count (what a snapshot of it records)."""

    base: EpisodeTable
    committed_bytes: int
    crc32: int
    lines: int
    snapshot_bytes: int = 0  # what the snapshot it was loaded from covers (0: none)
    pending: list[dict[str, Any]] = field(default_factory=list)  # appended, not yet in ``base``

    def __len__(self) -> int:
        return len(self.base) + len(self.pending)

    @property
    def table(self) -> EpisodeTable:
        if self.pending:  # joined once, not per append: a column is copied when it grows
            tail = EpisodeTable.from_entries(self.base.version, self.pending, len(self.base))
            self.base, self.pending = self.base.concat(tail), []
        return self.base

    def append(self, entry: dict[str, Any], line: bytes) -> None:
        """Record one more committed entry, written as ``line`` (with its newline)."""
        self.pending.append(entry)
        self.committed_bytes += len(line)
        self.crc32 = zlib.crc32(line, self.crc32)
        self.lines += 1

    @property
    def snapshot_is_current(self) -> bool:
        return self.snapshot_bytes == self.committed_bytes

    def save_snapshot(self, root: Path) -> None:
        save_snapshot(root, self.table, self.committed_bytes, self.crc32, self.lines)
        self.snapshot_bytes = self.committed_bytes


def load_index(root: Path, version: int) -> IndexState:
    """The committed entries of ``root``'s index.jsonl: from the snapshot and the lines after it
    where a snapshot of a prefix of today's index exists (version 2), else from every line."""
    path = root / "index.jsonl"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if not stat.S_ISREG(mode):
        _read_regular(path, root)  # raises the one-line error for a missing or odd index
    snapshot = _load_snapshot(root, version) if version >= 2 else None
    try:
        with open(path, "rb") as handle:
            table, covered, crc, lines = EpisodeTable.from_entries(version, []), 0, 0, 0
            if snapshot is not None:
                candidate, header = snapshot
                prefix_crc = _crc(handle, header["covered_bytes"])
                if prefix_crc == header["crc32"]:
                    table, covered, crc, lines = (
                        candidate,
                        header["covered_bytes"],
                        prefix_crc,
                        header["lines"],
                    )
            handle.seek(covered)
            raw = handle.read()
    except OSError as error:
        raise DatasetError(f"{path} cannot be read: {error.strerror}") from None
    entries = index_entries(root, raw, line=lines + 1, episode=len(table))
    tail = EpisodeTable.from_entries(version, entries, first=len(table))
    if len(tail):
        table = table.concat(tail)
    valid = committed_length(raw)
    return IndexState(
        table,
        covered + valid,
        zlib.crc32(memoryview(raw)[:valid], crc),
        lines + raw.count(b"\n", 0, valid),
        snapshot_bytes=covered,
    )


def _crc(handle: Any, size: int) -> int | None:
    """The CRC-32 of the first ``size`` bytes of ``handle``, or None when it is shorter."""
    crc = 0
    while size > 0:
        piece = handle.read(min(size, READ_PIECE))
        if not piece:
            return None
        crc = zlib.crc32(piece, crc)
        size -= len(piece)
    return crc


def save_snapshot(root: Path, table: EpisodeTable, covered_bytes: int, crc32: int, lines: int) -> None:
    """Write ``table`` as the snapshot of the first ``covered_bytes`` of index.jsonl (``lines``
    lines, CRC-32 ``crc32``), atomically: a reader sees the old snapshot or the new one."""
    header = {
        "snapshot_version": SNAPSHOT_VERSION,
        "format_version": table.version,
        "episodes": len(table),
        "lines": lines,
        "covered_bytes": covered_bytes,
        "crc32": crc32,
    }
    arrays = {
        **table.columns,
        "header": _json_array(header),
        "strings": _json_array(table.strings),
        "rest": _json_array({str(number): other for number, other in table.rest.items()}),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # stored, not deflated: loading is a copy, and sizes are known
    atomic_write_bytes(root / SNAPSHOT, buffer.getvalue())


def _json_array(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), np.uint8)


def _from_json_array(array: np.ndarray) -> Any:
    return json.loads(array.tobytes())


_COLUMN_DTYPES = {
    "length": np.int64,
    "seed": np.int64,
    "seed_state": np.int8,
    "success": np.int8,
    "return": np.float64,
    "has_return": np.bool_,
    "bytes": np.int64,
    "sha256": np.uint8,
    "has_sha256": np.bool_,
    **{f"{name}_code": np.int32 for name in STRINGS},
}


def _load_snapshot(root: Path, version: int) -> tuple[EpisodeTable, dict[str, Any]] | None:
    """The snapshot's table and header, or None when there is none or it is not one the store
    wrote (any doubt means the index is parsed instead)."""
    path = root / SNAPSHOT
    if _regular_size(path) is None:
        return None
    with contextlib.suppress(Exception):
        with zipfile.ZipFile(path) as archive:
            # Stored members only: nothing is inflated beyond the file's own size.
            if any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist()):
                return None
        with np.load(path, allow_pickle=False) as arrays:
            loaded = {name: arrays[name] for name in arrays.files}
        return _checked_snapshot(root, version, loaded)
    return None


def _checked_snapshot(
    root: Path, version: int, loaded: dict[str, np.ndarray]
) -> tuple[EpisodeTable, dict[str, Any]] | None:
    header = _from_json_array(loaded.pop("header"))
    strings = _from_json_array(loaded.pop("strings"))
    rest = _from_json_array(loaded.pop("rest"))
    count = header["episodes"]
    if (
        header.get("snapshot_version") != SNAPSHOT_VERSION
        or header.get("format_version") != version
        or set(loaded) != set(_COLUMN_DTYPES)
        or not all(
            type(header.get(key)) is int and header[key] >= 0
            for key in ("episodes", "lines", "covered_bytes", "crc32")
        )
    ):
        return None
    for name, dtype in _COLUMN_DTYPES.items():
        shape = (count, 32) if name == "sha256" else (count,)
        if loaded[name].dtype != dtype or loaded[name].shape != shape:
            return None
    c = loaded
    if not (
        (c["length"] >= 0).all()
        and (c["length"] < 2**62).all()
        and np.isin(c["seed_state"], (0, 1, 2)).all()
        and np.isin(c["success"], (0, 1, 2, 3)).all()
        and (c["bytes"] >= -1).all()
        and isinstance(strings, dict)
        and set(strings) == set(STRINGS)
        and all(isinstance(s, list) and all(isinstance(v, str) for v in s) for s in strings.values())
        and all(((c[f"{n}_code"] >= -1) & (c[f"{n}_code"] < len(strings[n]))).all() for n in STRINGS)
        and all((c[f"{n}_code"] >= 0).all() for n in ("instruction", "task", "env_id"))
        and isinstance(rest, dict)
    ):
        return None
    others: dict[int, dict] = {}
    for key, other in rest.items():
        if not key.isdigit() or not 0 <= int(key) < count or not isinstance(other, dict):
            return None
        others[int(key)] = other
    table = EpisodeTable(version, c, strings, others)
    index_path = root / "index.jsonl"
    for number in others:  # entries with fields outside the columns: checked as lines are
        entry = table[number]
        check_episode_file(root, index_path, number + 1, entry.get("file"))
        _check_entry(index_path, number + 1, entry)
    return table, header
