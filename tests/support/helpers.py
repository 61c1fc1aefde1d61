"""Shared test helpers (tests/support is on pytest's pythonpath)."""

import torch

from policies import FusionConfig, PolicyConfig, TextConfig, VisionConfig


def make_tiny_config(fusion_type: str = "cross_attention", **fusion: object) -> PolicyConfig:
    """D=16, one block, 16x16 frames, 4 tokens per frame, word-level text encoder."""
    return PolicyConfig(
        text=TextConfig(encoder="word", word_dim=16, word_buckets=64),
        vision=VisionConfig(image_size=(16, 16), channels=(8, 16), frame_tokens=4),
        fusion_kwargs=FusionConfig(
            fusion_type=fusion_type, projection_dim=16, num_blocks=1, num_heads=2, **fusion
        ),
        instruction_dropout=0.0,
    )


def random_frames(batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, steps, 16, 16, 3), dtype=torch.uint8, generator=generator)
