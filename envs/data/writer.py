"""The dataset writer: appends episodes to a dataset directory, one writer at a time, by the
format's crash rules (format.py)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.format import (
    DEFAULT_FRAMES_PER_BLOCK,
    FORMAT,
    FORMAT_VERSION,
    DatasetError,
    Episode,
    atomic_write_bytes,
    check_layout,
    disk_full_error,
    episode_file,
    fsync_dir,
    read_metadata,
    refuse_foreign_folder,
)
from envs.data.index import EpisodeTable, IndexState, load_index
from envs.spaces import action_space_spec


@contextlib.contextmanager
def hold_interrupts() -> Iterator[None]:
    """Hold Ctrl-C until the block ends: a commit (an episode's file and index line, a new
    dataset's metadata and empty index) is never cut in the middle; the interrupt is raised
    once it is whole. Signals reach the main thread only, so elsewhere there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)  # Python's own handler raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


class DatasetWriter:
    """Appends episodes to a dataset directory (created if missing). One writer at a time.

    A new dataset is written in the current format version; an existing one is appended to in
    its own (a version-1 dataset keeps its layout until ``instructcraft data upgrade``). Closing
    saves the index snapshot of a version-2 dataset.

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
        check_layout(self.root / "metadata.json", {**layout, "frames_per_block": int(frames_per_block)})
        refuse_foreign_folder(self.root)
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
            self.metadata = read_metadata(self.root)
            expected = {"image_shape": list(image_shape), "action_space": spec}
            for key, value in expected.items():
                if self.metadata[key] != value:
                    self.close()
                    raise DatasetError(
                        f"{metadata_path}: cannot append, {key} is {self.metadata[key]} but the new "
                        f"episodes have {value}; write to a new dataset directory"
                    )
            self._index_state = load_index(self.root, self.metadata["format_version"])
            index_path = self.root / "index.jsonl"
            if self._index_state.committed_bytes != index_path.stat().st_size:
                with open(index_path, "r+b") as handle:
                    handle.truncate(self._index_state.committed_bytes)
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
            self._index_state = IndexState(EpisodeTable.from_entries(FORMAT_VERSION, []), 0, 0, 0)
        self.version = int(self.metadata["format_version"])
        self.frames_per_block = int(self.metadata["frames_per_block"])
        # Unbuffered: a failed append can be cut back to the committed prefix.
        self._index = open(self.root / "index.jsonl", "ab", buffering=0)  # noqa: SIM115

    def __len__(self) -> int:
        return len(self._index_state)

    def add(self, episode: Episode) -> int:
        """Commit one episode; returns its index."""
        return self.add_all([episode])[0]

    def add_all(self, episodes: Sequence[Episode]) -> list[int]:
        """Commit several episodes as one: their files are written first and their index lines
        land in a single write, so a reader (or a resumed run) finds all of them or none, even
        after a hard kill (the pieces of one plan-following game). Returns their indices."""
        for episode in episodes:  # nothing is written when any of them is refused
            shape = list(episode.images.shape[1:])
            if shape != self.metadata["image_shape"]:
                raise DatasetError(f"expected images {self.metadata['image_shape']}, got {shape}")
        first = len(self._index_state)
        numbers = list(range(first, first + len(episodes)))
        payloads = [self._payload(episode) for episode in episodes]
        intact = f"the {first} earlier episodes in {self.root} are intact"
        written: list[Path] = []
        with hold_interrupts():  # a Ctrl-C lands after the commit, never inside it
            try:
                for number, data in zip(numbers, payloads, strict=True):
                    path = self.root / episode_file(number, self.version)
                    if not path.parent.is_dir():  # a new sub-folder: its own entry made durable too
                        path.parent.mkdir()
                        fsync_dir(path.parent.parent)
                    atomic_write_bytes(path, data)
                    written.append(path)
            except OSError as error:
                for path in written:
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise disk_full_error(
                    self.root / episode_file(numbers[len(written)], self.version), error, intact
                ) from None
            entries = [
                self._entry(number, episode, data)
                for number, episode, data in zip(numbers, episodes, payloads, strict=True)
            ]
            lines = [(json.dumps(entry) + "\n").encode() for entry in entries]
            fd = self._index.fileno()
            committed = os.fstat(fd).st_size
            try:
                pending = memoryview(b"".join(lines))
                while pending:
                    pending = pending[self._index.write(pending) :]
                os.fsync(fd)
            except OSError as error:
                # Undo these episodes: the index keeps its committed prefix, their files go.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, committed)
                for path in written:
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise disk_full_error(self.root / "index.jsonl", error, intact) from None
            for entry, line in zip(entries, lines, strict=True):
                self._index_state.append(entry, line)
        return numbers

    def _payload(self, episode: Episode) -> bytes:
        """The episode's file: its arrays, frames in blocks of ``frames_per_block``, deflated."""
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
        return buffer.getvalue()

    def _entry(self, number: int, episode: Episode, data: bytes) -> dict[str, Any]:
        return {
            "episode": number,
            "file": episode_file(number, self.version),
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

    def close(self) -> None:
        if getattr(self, "_index", None) is not None and not self._index.closed:
            self._index.close()
            if self.version >= 2 and not self._index_state.snapshot_is_current:
                # Only a cache of the index: a snapshot that cannot be written (a full disk)
                # leaves the old one, which covers a prefix, or none; both are read correctly.
                with contextlib.suppress(OSError), hold_interrupts():
                    self._index_state.save_snapshot(self.root)
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
