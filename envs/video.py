"""Writing videos (imageio + its bundled ffmpeg): evaluation and rollout videos, TensorBoard GIFs
and the mp4 files of recordings. Reading recordings is ``envs.data.video``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np

from envs.errors import EnvSettingError

FORMATS = ("mp4", "gif")


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """``frame`` repeated ``scale`` times along height and width (nearest neighbour)."""
    if scale == 1:
        return frame
    return np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)


def write_video(
    target: str | os.PathLike[str] | IO[bytes],
    frames: Iterable[np.ndarray],
    fps: int = 10,
    *,
    scale: int = 1,
    lossless: bool = False,
    format: str | None = None,
) -> None:
    """Write uint8 (H, W, 3) ``frames`` as one video.

    ``format`` is "mp4" (H.264) or "gif"; None takes it from ``target``'s suffix. A file object
    takes GIFs only (TensorBoard's image plugin gets its animations from one). ``scale`` > 1
    upscales each frame (nearest) so small observations stay legible. ``lossless`` mp4s store
    RGB exactly (libx264rgb at qp 0), so a recording read back gives the same frames; otherwise
    it is the yuv420p H.264 that players and recorders use.
    """
    named = isinstance(target, (str, os.PathLike))
    kind = format or (Path(target).suffix.lstrip(".").lower() if named else "")
    if kind not in FORMATS or (kind == "mp4" and not named):
        raise EnvSettingError(
            f"video format must be one of {FORMATS} (mp4 to a path), got {kind!r} for {target!r}"
        )
    if lossless and kind != "mp4":
        raise EnvSettingError("only mp4 videos can be lossless")
    import imageio.v2 as imageio

    if named:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
    images = (upscale(np.asarray(frame, dtype=np.uint8), scale) for frame in frames)  # one at a time
    if kind == "gif":
        imageio.mimsave(target, list(images), format="GIF", duration=1000 / fps, loop=0)
        return
    # imageio's quality 8 is x264's crf 10; a lossless video sets x264's qp 0 instead.
    settings = (
        {"codec": "libx264rgb", "ffmpeg_params": ["-qp", "0"], "pixelformat": "rgb24"}
        if lossless
        else {"codec": "libx264", "quality": 8}
    )
    with imageio.get_writer(str(target), format="ffmpeg", fps=fps, macro_block_size=1, **settings) as writer:
        for image in images:
            writer.append_data(image)
