"""Video frames in and out (imageio + its bundled ffmpeg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from envs.dataset import DatasetError


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


def write_frames(path: str | Path, frames: np.ndarray, fps: int = 20, lossless: bool = True) -> None:
    """uint8 (N, H, W, 3) -> an H.264 mp4 (lossless by default, so round trips are exact)."""
    import imageio.v2 as imageio

    # libx264rgb at qp 0 stores RGB exactly; plain libx264 (yuv420p) is what recorders write.
    with imageio.get_writer(
        str(path), format="ffmpeg", fps=fps, codec="libx264rgb" if lossless else "libx264", macro_block_size=1,
        ffmpeg_params=["-qp", "0"] if lossless else None, pixelformat="rgb24" if lossless else "yuv420p",
    ) as writer:  # fmt: skip
        for frame in frames:
            writer.append_data(np.asarray(frame, dtype=np.uint8))


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (H, W), as VPT's loader does (cv2 INTER_LINEAR)."""
    if frame.shape[:2] == tuple(size):
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))


def count_frames(path: str | Path) -> int:
    """Frames in a video, decoded and counted (exact, unlike container metadata)."""
    import imageio.v2 as imageio

    with imageio.get_reader(str(path), format="ffmpeg") as reader:
        return sum(1 for _ in reader)
