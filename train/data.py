"""Torch data loading for behavioral cloning: chunks (episode, t0:t0+L) from the native dataset.

Shape legend: B chunks, L steps per chunk, H, W image, A action components.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from envs.data.store import Dataset
from policies import ConfigError
from train.batch import Batch
from train.errors import SettingError


def trainable(entry: dict[str, Any], only_success: bool) -> bool:
    """Episodes to learn from: successful ones, and relabelled ones whatever their outcome (the
    expert labelled every step of a DAgger rollout, so its labels are good even where the
    executed actions failed)."""
    relabelled = "dagger_round" in (entry.get("extra") or {})
    return not only_success or relabelled or bool(entry.get("success", True))


class ChunkDataset(torch.utils.data.Dataset):
    """Item i = one row of L steps: frames uint8 (L, H, W, 3), actions long (L,) or (L, A),
    frame_mask bool (L,) True = real step, times long (L,) absolute step in its episode, segments long
    (L,) which piece of the row a step belongs to, returns float (L,) discounted reward-to-go,
    instruction str, task str.

    Episodes are cut into pieces of at most L steps. Unpacked (``pack=False``), each row holds
    one piece, right-padded: on data whose episodes are shorter than L most of a row is padding.
    Packed, a row holds several pieces that share an instruction, one after another
    (``segments`` 0, 1, ...); the policy keeps them apart with a block-causal mask, so a step sees
    only its own episode's earlier frames, exactly as if it were alone in its row. Packing is
    decided once, from ``seed``, so a resumed run reads the same rows.

    Args:
        episodes: the episode indices this process reads (its shard or split); None = all.
        only_success: skip episodes the expert failed (relabelled DAgger episodes are kept).
        cache_mib: keep up to this many MiB of decoded episodes (frames, actions, returns) in
            memory, least recently used out first, so later epochs skip decompression; each
            loader process holds its own. 0 decodes every row's pieces afresh.
    """

    def __init__(
        self,
        path: str,
        chunk_length: int,
        episodes: list[int] | None = None,
        only_success: bool = True,
        gamma: float = 0.99,
        pack: bool = False,
        seed: int = 0,
        cache_mib: int = 0,
    ) -> None:
        if cache_mib < 0:
            raise ConfigError(f"cache_mib must be >= 0, got {cache_mib}")
        self.data = Dataset(path)
        self.cache_limit = cache_mib * 2**20
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.cache_bytes = 0
        self.chunk_length = chunk_length
        self.gamma = gamma
        self.pack = pack
        chosen = range(len(self.data)) if episodes is None else episodes
        pieces: list[tuple[int, int, int]] = []  # (episode, start, stop)
        for number in chosen:
            entry = self.data.episodes[number]
            if not trainable(entry, only_success):
                continue
            length = entry["length"]
            pieces.extend(
                (number, start, min(start + chunk_length, length)) for start in range(0, length, chunk_length)
            )
        if not pieces:
            raise SettingError(f"{path}: no episodes to train on (empty shard or no successful episodes)")
        self.rows: list[list[tuple[int, int, int]]] = (
            self._pack(pieces, np.random.default_rng([seed, 31_337])) if pack else [[p] for p in pieces]
        )
        spec = self.data.metadata["action_space"]
        self.action_components = 1 if spec["type"] == "Discrete" else len(spec["nvec"])

    def _pack(
        self, pieces: list[tuple[int, int, int]], rng: np.random.Generator
    ) -> list[list[tuple[int, int, int]]]:
        """First-fit of shuffled pieces into rows of ``chunk_length`` steps, one instruction a row."""
        by_instruction: dict[str, list[tuple[int, int, int]]] = {}
        for piece in pieces:
            by_instruction.setdefault(self.data.episodes[piece[0]]["instruction"], []).append(piece)
        rows: list[list[tuple[int, int, int]]] = []
        for instruction in sorted(by_instruction):
            group = by_instruction[instruction]
            order = rng.permutation(len(group))
            open_rows: list[tuple[int, list[tuple[int, int, int]]]] = []  # (free steps, row)
            for index in order:
                piece = group[int(index)]
                size = piece[2] - piece[1]
                for slot, (free, row) in enumerate(open_rows):
                    if free >= size:
                        row.append(piece)
                        open_rows[slot] = (free - size, row)
                        break
                else:
                    open_rows.append((self.chunk_length - size, [piece]))
            rows.extend(row for _, row in open_rows)
        return rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def items(self) -> list[tuple[int, int]]:
        """(episode, start) of each row's first piece."""
        return [(row[0][0], row[0][1]) for row in self.rows]

    @property
    def real_fraction(self) -> float:
        """Real steps over row capacity: how much of each batch is not padding."""
        steps = sum(stop - start for row in self.rows for _, start, stop in row)
        return steps / (len(self.rows) * self.chunk_length)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        length = self.chunk_length
        first = self.data.episodes[row[0][0]]
        image_shape = tuple(self.data.metadata["image_shape"])
        frames = np.zeros((length, *image_shape), np.uint8)
        action_shape = (length,) if self.action_components == 1 else (length, self.action_components)
        actions = np.zeros(action_shape, np.int64)
        mask = np.zeros(length, bool)
        times = np.zeros(length, np.int64)
        segments = np.zeros(length, np.int64)
        returns = np.zeros(length, np.float32)
        at = 0
        for segment, (number, start, stop) in enumerate(row):
            steps = stop - start
            piece = self._piece(number, start, stop)
            place = slice(at, at + steps)
            frames[place] = piece["images"]
            actions[place] = piece["actions"]
            mask[place] = True
            times[place] = np.arange(start, stop)
            segments[place] = segment
            returns[place] = piece["returns"]
            at += steps
        # Padding continues the last piece's clock (as an unpacked row always did).
        times[at:] = np.arange(times[at - 1] + 1, times[at - 1] + 1 + length - at)
        segments[at:] = segments[at - 1]
        return {
            "frames": torch.from_numpy(frames),
            "actions": torch.from_numpy(actions),
            "frame_mask": torch.from_numpy(mask),
            "times": torch.from_numpy(times),
            "segments": torch.from_numpy(segments),
            "returns": torch.from_numpy(returns),
            "instruction": first["instruction"],
            "task": first["task"],
        }

    def _piece(self, number: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """images, actions and returns (discounted reward-to-go, the value-head targets) of
        steps ``start:stop`` of an episode, from the cache when it is on."""
        if not self.cache_limit or self._decoded_bytes(number) > self.cache_limit:
            chunk = self.data.chunk(number, start, stop)
            # The returns need every later reward, but not the episode's frames.
            returns = discounted_returns(self.data.rewards(number), self.gamma)[start:stop]
            return {"images": chunk["images"], "actions": chunk["actions"], "returns": returns}
        whole = self._cache.get(number)
        if whole is None:
            chunk = self.data.chunk(number, 0, self.data.episodes[number]["length"])
            whole = {
                "images": chunk["images"],
                "actions": chunk["actions"],
                "returns": discounted_returns(chunk["rewards"], self.gamma),
            }
            size = sum(array.nbytes for array in whole.values())
            if size <= self.cache_limit:
                while self.cache_bytes + size > self.cache_limit:
                    _, evicted = self._cache.popitem(last=False)
                    self.cache_bytes -= sum(array.nbytes for array in evicted.values())
                self._cache[number] = whole
                self.cache_bytes += size
        else:
            self._cache.move_to_end(number)
        return {name: array[start:stop] for name, array in whole.items()}

    def _decoded_bytes(self, number: int) -> int:
        """What episode ``number`` takes in the cache: its frames, actions and returns. One
        larger than the whole budget is read piece by piece instead, as with the cache off."""
        length = self.data.episodes[number]["length"]
        frame = int(np.prod(self.data.metadata["image_shape"]))
        return length * (frame + 8 * self.action_components + 4)

    def __getstate__(self) -> dict[str, Any]:
        """Loader worker processes start with an empty cache (never a copy of this one's)."""
        state = dict(self.__dict__)
        state["_cache"], state["cache_bytes"] = OrderedDict(), 0
        return state


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """float32 reward-to-go: out[t] = rewards[t] + gamma * out[t + 1]."""
    out = np.zeros(len(rewards), np.float32)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


class ResumableSampler(Sampler[int]):
    """An endless stream of shuffled epochs; sample k depends only on (seed, k), so a run that
    resumes at sample k reads exactly what an uninterrupted run would."""

    def __init__(self, size: int, seed: int, start: int = 0) -> None:
        self.size, self.seed, self.start = size, seed, start

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.size)
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            for index in order[offset:]:
                yield int(index)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs it for len(), which we never call
        return 2**62


def make_loader(
    dataset: ChunkDataset, batch_size: int, workers: int, seed: int, start_sample: int, pin_memory: bool
) -> DataLoader:
    """Endless ``Batch``es of ``batch_size`` rows (``ResumableSampler``: resumable at any sample)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=Batch.collate,
        sampler=ResumableSampler(len(dataset), seed, start_sample),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=True,
        multiprocessing_context="spawn" if workers > 0 else None,
        # Its own generator: creating the iterator must not draw from the global RNG, or a
        # resumed run's instruction dropout would drift from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )


def random_shift(frames: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """frames uint8 (B, L, H, W, 3): one random translation per chunk (replicate padding), the
    same for all its frames so the history stays consistent."""
    if pad == 0:
        return frames
    batch, length, height, width, channels = frames.shape
    flat = frames.permute(0, 1, 4, 2, 3).reshape(batch, length * channels, height, width).float()
    padded = torch.nn.functional.pad(flat, (pad, pad, pad, pad), mode="replicate")
    shifts = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
    out = torch.stack(
        [padded[b, :, dy : dy + height, dx : dx + width] for b, (dy, dx) in enumerate(shifts.tolist())]
    )
    return out.reshape(batch, length, channels, height, width).permute(0, 1, 3, 4, 2).to(torch.uint8)
