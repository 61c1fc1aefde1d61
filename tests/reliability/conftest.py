"""Fixtures for the reliability probes: a tiny Crafter checkpoint and a tiny dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_tiny_config

import envs
from envs.data.collect import collect
from policies import InstructionPolicy


@pytest.fixture(scope="session")
def crafter_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 17-action policy for 64x64 frames (Crafter-Instruct's spaces)."""
    config = make_tiny_config().replace(
        **{"vision.image_size": [64, 64], "vision.channels": [8, 16, 16], "fusion_kwargs.max_history": 8}
    )
    torch.manual_seed(0)
    return InstructionPolicy(config).save_pretrained(tmp_path_factory.mktemp("ckpt") / "checkpoint")


@pytest.fixture(scope="session")
def crafter_demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three expert episodes (seeds 4, 5, 6) with DART label noise; read-only for the tests."""
    out = tmp_path_factory.mktemp("data") / "demos"
    collect(
        str(out), envs.CRAFTER_ID, "crafter_planner", 3, tasks=["collect_wood", "eat_cow"], seed=4, noise=0.2
    )
    return out
