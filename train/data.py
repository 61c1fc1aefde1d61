"""Torch data loading for behavioral cloning: chunks (episode, t0:t0+L) from the native dataset.

Shape legend: B chunks, L steps per chunk, H, W image, A action components.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from envs.dataset import Dataset


class ChunkDataset(torch.utils.data.Dataset):
    """Item i = one chunk: frames uint8 (L, H, W, 3), actions long (L,) or (L, A), mask bool (L,)
    True = real step, times long (L,) absolute step, returns float (L,) discounted reward-to-go,
    instruction str, task str.

    Chunks tile each episode with stride L; an episode's last chunk is right-padded. Each item
    inflates only the frame blocks it covers.

    Args:
        episodes: the episode indices this process reads (its shard); None = all.
        only_success: skip episodes the expert failed.
    """

    def __init__(
        self,
        path: str,
        chunk_length: int,
        episodes: list[int] | None = None,
        only_success: bool = True,
        gamma: float = 0.99,
    ) -> None:
        self.data = Dataset(path)
        self.chunk_length = chunk_length
        self.gamma = gamma
        chosen = range(len(self.data)) if episodes is None else episodes
        self.items: list[tuple[int, int]] = []
        for number in chosen:
            entry = self.data.episodes[number]
            if only_success and not entry.get("success", True):
                continue
            self.items.extend((number, start) for start in range(0, entry["length"], chunk_length))
        if not self.items:
            raise ValueError(f"{path}: no episodes to train on (empty shard or no successful episodes)")
        spec = self.data.metadata["action_space"]
        self.action_components = 1 if spec["type"] == "Discrete" else len(spec["nvec"])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        number, start = self.items[index]
        entry = self.data.episodes[number]
        length = self.chunk_length
        chunk = self.data.chunk(number, start, start + length)
        steps = len(chunk["actions"])
        frames = np.zeros((length, *chunk["images"].shape[1:]), np.uint8)
        frames[:steps] = chunk["images"]
        action_shape = (length,) if self.action_components == 1 else (length, self.action_components)
        actions = np.zeros(action_shape, np.int64)
        actions[:steps] = chunk["actions"]
        mask = np.zeros(length, bool)
        mask[:steps] = True
        times = np.arange(start, start + length, dtype=np.int64)
        returns = np.zeros(length, np.float32)
        returns[:steps] = self._returns(number)[start : start + steps]
        return {
            "frames": torch.from_numpy(frames),
            "actions": torch.from_numpy(actions),
            "mask": torch.from_numpy(mask),
            "times": torch.from_numpy(times),
            "returns": torch.from_numpy(returns),
            "instruction": entry["instruction"],
            "task": entry["task"],
        }

    def _returns(self, number: int) -> np.ndarray:
        """Discounted reward-to-go over the whole episode (value-head targets)."""
        rewards = self.data.chunk(number, 0, self.data.episodes[number]["length"])["rewards"]
        out = np.zeros(len(rewards), np.float32)
        running = 0.0
        for t in range(len(rewards) - 1, -1, -1):
            running = float(rewards[t]) + self.gamma * running
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
    return DataLoader(
        dataset,
        batch_size=batch_size,
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
