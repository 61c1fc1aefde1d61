"""``instructcraft data upgrade``: convert a version-1 dataset to the current version in place.

Version 1 kept every episode file in episodes/ itself; version 2 spreads them over sub-folders
(format.py). The upgrade never leaves a dataset that cannot be read, whenever it is stopped:

1. each episode file gets its version-2 name as a hard link (a copy where the file system has no
   links), so that both names hold it; a version-1 reader still finds every file;
2. metadata.json says version 2 (one atomic write: the switch);
3. index.jsonl names the version-2 files (one atomic write), and the snapshot is saved;
4. the version-1 names are removed (each only once its version-2 name holds the same file).

Stopped before 2, the dataset is version 1 and every file is where its index says; after 2, it
is version 2 and every index line names a file that exists (the index's "file" says which name,
and either is inside episodes/). Running the upgrade again finishes whatever is left. It holds
the writers' lock throughout, so no collect, merge or DAgger appends meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import filecmp
import json
import os
import zlib
from pathlib import Path
from typing import Any

from envs.data.format import (
    EPISODE_FILE,
    FORMAT_VERSION,
    DatasetError,
    atomic_write_bytes,
    episode_file,
    fsync_dir,
    read_metadata,
)
from envs.data.index import EpisodeTable, IndexState, load_index

# Errors of a file system that has no hard links (or none across these folders): copy instead.
NO_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def upgrade_dataset(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Upgrade the dataset at ``path`` to the current format version in place; returns what was
    done. A dataset already at the current version is left as it is (``upgraded`` False), after
    finishing an upgrade that was stopped midway. Refused, with nothing changed: a folder that is
    not a dataset, a dataset a writer holds, an episode file that is a symbolic link."""
    root = Path(path)
    if not (root / "metadata.json").is_file():
        raise DatasetError(
            f"{root} is not an instructcraft dataset (no metadata.json): pass the folder that "
            "`instructcraft collect` (or import, merge) wrote"
        )
    with _writer_lock(root):
        metadata = read_metadata(root)
        version = metadata["format_version"]
        table = load_index(root, version).table
        links = copies = 0
        folders: set[Path] = set()
        for number in range(len(table)):
            source, target = root / table.file(number), root / episode_file(number)
            if source == target:
                continue
            if target.exists() or target.is_symlink():
                if source.exists() and not _same(source, target):
                    raise DatasetError(
                        f"{target} exists and is not {source} (episode {number}): the upgrade would put "
                        f"it in the episode's place; move it out of {root / 'episodes'} and run "
                        f"`instructcraft data upgrade {root}` again"
                    )
                continue  # linked by a run stopped midway
            if source.is_symlink():
                raise DatasetError(
                    f"{source} (episode {number}) is a symbolic link: replace it with the file it "
                    f"points to, then run `instructcraft data upgrade {root}` again"
                )
            if not source.exists():
                continue  # missing before the upgrade: `data check` names it, as it did
            if not target.parent.is_dir():
                target.parent.mkdir(parents=True)
                fsync_dir(target.parent.parent)
            try:
                os.link(source, target)
                links += 1
            except OSError as error:
                if error.errno not in NO_LINKS:
                    raise DatasetError(f"cannot link {source} to {target}: {error.strerror}") from None
                atomic_write_bytes(target, source.read_bytes())
                copies += 1
            folders.add(target.parent)
        for folder in folders:
            fsync_dir(folder)
        old_files = [root / table.file(number) for number in range(len(table))]
        if version != FORMAT_VERSION:  # the switch
            metadata["format_version"] = FORMAT_VERSION
            atomic_write_bytes(root / "metadata.json", json.dumps(metadata, indent=2).encode())
        renamed = _rename_in_index(root)
        removed = _remove_old_names(root, old_files)
    return {
        "path": str(root),
        "from_version": version,
        "to_version": FORMAT_VERSION,
        "episodes": len(table),
        "upgraded": version != FORMAT_VERSION,
        "linked": links,
        "copied": copies,
        "index_lines_renamed": renamed,
        "old_names_removed": removed,
    }


@contextlib.contextmanager
def _writer_lock(root: Path) -> Any:
    """The lock every writer holds (writer.py): the upgrade waits for no one, it refuses."""
    try:
        lock = open(root / ".lock", "a")  # noqa: SIM115  (held for the upgrade's life)
    except OSError as error:
        raise DatasetError(
            f"cannot lock {root / '.lock'}: {error.strerror}; the dataset must be writable"
        ) from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetError(
                f"{root} is being written by another process (collect, merge or DAgger): let it finish, "
                f"then run `instructcraft data upgrade {root}` again"
            ) from None
        yield
    finally:
        lock.close()  # closing releases the lock


def _rename_in_index(root: Path) -> int:
    """Rewrite index.jsonl so every line names its version-2 file (the torn tail of a killed
    writer, never committed, is dropped); save the snapshot. Returns the lines changed."""
    state = load_index(root, FORMAT_VERSION)
    table = state.table
    renamed = sum(1 for other in table.rest.values() if "file" in other)
    if not renamed and state.committed_bytes == (root / "index.jsonl").stat().st_size:
        if not state.snapshot_is_current:
            state.save_snapshot(root)
        return 0
    rest = {number: {k: v for k, v in other.items() if k != "file"} for number, other in table.rest.items()}
    table = EpisodeTable(FORMAT_VERSION, table.columns, table.strings, {n: o for n, o in rest.items() if o})
    data = "".join(json.dumps(entry) + "\n" for entry in table).encode()
    atomic_write_bytes(root / "index.jsonl", data)
    IndexState(table, len(data), zlib.crc32(data), len(table)).save_snapshot(root)
    return renamed


def _same(a: Path, b: Path) -> bool:
    """Whether two names hold one file, or two files with the same bytes (a copy)."""
    return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)


def _remove_old_names(root: Path, old_files: list[Path]) -> int:
    """Remove each episode's version-1 name once its version-2 name holds the same file: those
    the index named before this run, and any left in episodes/ by a run stopped midway."""
    episodes = root / "episodes"
    candidates = [(number, path) for number, path in enumerate(old_files)]
    for path in sorted(episodes.iterdir()) if episodes.is_dir() else ():
        if EPISODE_FILE.fullmatch(path.name):
            number = int(path.name.removesuffix(".npz"))
            if number < len(old_files):
                candidates.append((number, path))
    removed = 0
    for number, old in candidates:
        new = root / episode_file(number)
        if old == new or old.is_symlink() or not old.is_file() or not new.is_file():
            continue
        if _same(old, new):
            old.unlink()
            removed += 1
    if removed:
        fsync_dir(episodes)
    return removed
