"""Frame encoders: uint8 frames in, P tokens per frame out.

Three trunks behind one interface (``vision.encoder``): IMPALA residual stacks, a cell-aligned
patch embedding for worlds drawn on a grid, and the DQN "Nature" stack.

Shape legend: N frames (any batch), H, W image, C channels, P tokens per frame.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from policies.config import VisionConfig


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ConvStack(nn.Module):
    """conv 3x3 -> max-pool 3x3 stride 2 -> two residual blocks (Espeholt et al., 2018)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.res0 = ResidualBlock(out_channels)
        self.res1 = ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv(x), 3, stride=2, padding=1)
        return self.res1(self.res0(x))


class CellTrunk(nn.Module):
    """One token per grid cell: a conv whose kernel and stride equal the cell size (each cell's
    pixels, and only them, make its token), then residual 3x3 blocks that let neighbouring
    cells inform each other. About a tenth of the IMPALA trunk's cost on 64x64 Crafter frames."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        width = config.channels[-1]
        self.embed = nn.Conv2d(3, width, config.cell_size, stride=config.cell_size)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(config.cell_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A kernel equal to its stride reads whole cells only: the pixels past the last whole
        # cell (64 = 9 * 7 + 1 for Crafter) are never read, so the image needs no crop (a copy).
        return self.blocks(self.embed(x))


def nature_trunk(channels: tuple[int, ...]) -> nn.Sequential:
    """The DQN encoder (Mnih et al., 2015): 8x8/4, 4x4/2, 3x3/1, ReLU between."""
    first, second, third = channels
    return nn.Sequential(
        nn.Conv2d(3, first, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(first, second, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(second, third, 3, stride=1),
    )


class FrameEncoder(nn.Module):
    """frames uint8 (N, H, W, 3) -> tokens float (N, P, C).

    Runs channels_last: the (N, H, W, 3) input already has channels-last strides once permuted.
    Tokens are the final feature grid reduced to sqrt(P) x sqrt(P) when larger (averaged, or
    merged: each token its patch's features concatenated, ``vision.token_pooling``), row-major.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        # One attribute name for every trunk: checkpoints name their weights "stacks.*".
        if config.encoder == "cells":
            self.stacks: nn.Module = CellTrunk(config)
        elif config.encoder == "nature":
            self.stacks = nature_trunk(tuple(config.channels))
        else:
            widths = (3, *config.channels)
            self.stacks = nn.Sequential(*[ConvStack(a, b) for a, b in itertools.pairwise(widths)])
        self.side = round(config.frame_tokens**0.5)
        self.merge = config.token_pooling == "merge"
        grid = config.grid
        self.patch = (grid[0] // self.side, grid[1] // self.side) if self.merge else (1, 1)
        self.output_dim = config.channels[-1] * self.patch[0] * self.patch[1]
        self.to(memory_format=torch.channels_last)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames (N, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")
        expected = tuple(self.config.image_size)
        if tuple(frames.shape[1:3]) != expected:
            raise ValueError(f"expected frames of size {expected}, got {tuple(frames.shape[1:3])}")
        dtype = next(self.parameters()).dtype
        x = rearrange(frames, "n h w c -> n c h w").to(dtype).div_(255.0)
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.stacks(x))
        if self.merge:
            a, b = self.patch
            return rearrange(x, "n c (h a) (w b) -> n (h w) (a b c)", a=a, b=b)
        if x.shape[-2:] != (self.side, self.side):
            x = F.adaptive_avg_pool2d(x, self.side)
        return rearrange(x, "n c h w -> n (h w) c")
