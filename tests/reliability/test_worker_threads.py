"""A worker pool that runs in this process (one worker, or capped to one) leaves this process's
torch threads alone: DAgger fine-tunes and BC steps after it must keep every core."""

from __future__ import annotations

import torch

from agent import evaluate
from train import dagger_rollout


def test_loading_the_in_process_worker_keeps_the_thread_count(crafter_checkpoint, monkeypatch) -> None:
    threads = torch.get_num_threads()
    monkeypatch.setattr(
        torch, "set_num_threads", lambda n: (_ for _ in ()).throw(AssertionError(f"set to {n}"))
    )
    evaluate._load_worker(str(crafter_checkpoint), "instructcraft/Crafter-Instruct-v0", {})
    dagger_rollout.load_worker(
        str(crafter_checkpoint), "instructcraft/Crafter-Instruct-v0", "crafter_planner"
    )
    assert torch.get_num_threads() == threads
