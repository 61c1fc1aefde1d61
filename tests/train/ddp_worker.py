"""Run by torchrun in the DDP test: trains a few steps, then every rank writes its weights."""

from __future__ import annotations

import sys

import torch.distributed as dist
from safetensors.torch import save_file

from train.bc import train_bc_policy
from train.config import load_run_config


def main() -> None:
    config, data, out = sys.argv[1:4]
    run = load_run_config(config, ["train.steps=4", "train.workers=0", "train.device=cpu"])
    policy, _ = train_bc_policy(run, data, out, progress=False)
    state = {
        k: v.contiguous() for k, v in policy.state_dict().items() if not k.startswith("text_encoder.backbone")
    }
    save_file(state, f"{out}/rank{dist.get_rank()}.safetensors")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
