"""Recorded videos read for the importers (imageio + its bundled ffmpeg), and the frame resize
VPT's loader applies. Writing a video is ``envs.video.write_video``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from envs.data.store import DatasetError


def read_frames(path: str | Path, start: int = 0, count: int | None = None) -> np.ndarray:
    """RGB frames [start, start + count) of a video as uint8 (N, H, W, 3); fewer if it ends."""
    import imageio.v2 as imageio

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    frames = []
    try:
        reader = imageio.get_reader(str(path), format="ffmpeg")
    except Exception as error:  # imageio raises several types for unreadable files
        raise DatasetError(f"{path} is not a readable video: {error}") from None
    with reader:
        for index, frame in enumerate(reader):
            if index < start:
                continue
            if count is not None and len(frames) >= count:
                break
            frames.append(np.asarray(frame, dtype=np.uint8)[..., :3])
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(frames)


def _linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``target`` outputs along one axis: the two source indices and the weight of
    the second, with cv2's half-pixel centres (src = (dst + 0.5) * source / target - 0.5)
    clamped to the edge pixels. Two taps whatever the scale: no antialiasing, like cv2."""
    position = (np.arange(target, dtype=np.float64) + 0.5) * (source / target) - 0.5
    position = np.clip(position, 0.0, source - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, source - 1)
    return low, high, position - low


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W[, C]) frame to (H', W'), as VPT's loader does with
    ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``: half-pixel centres, two taps per axis
    (no antialiasing when shrinking, unlike PIL's BILINEAR), rounded to nearest. cv2 uses
    11-bit fixed-point weights, so its pixels can differ from these by 1."""
    frame = np.asarray(frame)
    if frame.shape[:2] == tuple(size):
        return frame
    rows_low, rows_high, row_weight = _linear_taps(frame.shape[0], size[0])
    cols_low, cols_high, col_weight = _linear_taps(frame.shape[1], size[1])
    extra = (1,) * (frame.ndim - 2)
    source = frame.astype(np.float64)
    row_weight = row_weight.reshape(-1, 1, *extra)
    rows = source[rows_low] * (1.0 - row_weight) + source[rows_high] * row_weight
    col_weight = col_weight.reshape(1, -1, *extra)
    out = rows[:, cols_low] * (1.0 - col_weight) + rows[:, cols_high] * col_weight
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def count_frames(path: str | Path) -> int:
    """Frames in a video, decoded and counted (exact, unlike container metadata)."""
    import imageio.v2 as imageio

    with imageio.get_reader(str(path), format="ffmpeg") as reader:
        return sum(1 for _ in reader)
