"""Run by torchrun in the DDP test: trains a few steps, then every rank writes its weights."""

from __future__ import annotations

import sys

import torch.distributed as dist
from safetensors.torch import save_file

from train.bc import train_bc
from train.config import load_run_config


def main() -> None:
    config, data, out = sys.argv[1:4]
    run = load_run_config(config, ["train.steps=4", "train.workers=0", "train.device=cpu"])
    captured = {}

    def keep(policy, step, writer):
        return {}

    import train.bc as bc

    original = bc.InstructionPolicy

    class Recording(original):  # type: ignore[misc, valid-type]
        def __init__(self, config):
            super().__init__(config)
            captured["policy"] = self

    bc.InstructionPolicy = Recording
    train_bc(run, data, out, progress=False, evaluate_fn=keep)
    state = {
        k: v.contiguous()
        for k, v in captured["policy"].state_dict().items()
        if not k.startswith("text_encoder.backbone")
    }
    save_file(state, f"{out}/rank{dist.get_rank()}.safetensors")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
