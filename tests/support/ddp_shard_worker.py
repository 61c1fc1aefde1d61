"""Run by torchrun in the DDP test: trains a few steps; every rank writes its weights and the
episodes its data shard holds and its loader actually read."""

from __future__ import annotations

import json
import sys

import torch.distributed as dist
from safetensors.torch import save_file

import train.bc as bc
from train.config import load_run_config

shard: list[int] = []
read: set[int] = set()


class RecordingChunks(bc.ChunkDataset):
    def __init__(self, path: str, chunk_length: int, episodes: list[int] | None = None, **kwargs) -> None:
        shard.extend(episodes if episodes is not None else [])
        super().__init__(path, chunk_length, episodes=episodes, **kwargs)

    def __getitem__(self, index: int):
        read.add(self.items[index][0])
        return super().__getitem__(index)


def main() -> None:
    config, data, out = sys.argv[1:4]
    bc.ChunkDataset = RecordingChunks
    run = load_run_config(config, ["train.steps=4", "train.workers=0", "train.device=cpu"])
    policy, _ = bc.train_bc_policy(run, data, out, progress=False)
    rank = dist.get_rank()
    state = {
        k: v.contiguous() for k, v in policy.state_dict().items() if not k.startswith("text_encoder.backbone")
    }
    save_file(state, f"{out}/rank{rank}.safetensors")
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump({"shard": shard, "read": sorted(read)}, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
