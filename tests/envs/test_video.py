"""envs.video.write_video: the one video writer (mp4 and GIF, to a path or a file object)."""

from __future__ import annotations

import io
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from envs.data.video import count_frames, read_frames
from envs.video import upscale, write_video


def frames(count: int = 5, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_a_lossless_mp4_reads_back_exactly(tmp_path: Path) -> None:
    original = frames()
    path = tmp_path / "nested" / "recording.mp4"
    write_video(path, original, fps=20, lossless=True)
    np.testing.assert_array_equal(read_frames(path), original)


def test_a_scaled_mp4_holds_every_frame_upscaled(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "episode.mp4"
    write_video(str(path), list(frames(count=3)), scale=4)
    back = read_frames(path)
    assert back.shape == (3, 64, 64, 3) and count_frames(path) == 3


def test_a_gif_to_a_path_or_a_file_object_holds_the_frames(tmp_path: Path) -> None:
    original = frames(count=4)
    write_video(tmp_path / "episode.gif", original, fps=10)
    buffer = io.BytesIO()
    write_video(buffer, original, fps=10, format="gif")
    assert buffer.getvalue() == (tmp_path / "episode.gif").read_bytes()
    back = np.asarray(imageio.mimread(buffer.getvalue(), format="GIF"))
    assert back.shape[:3] == (4, 16, 16)


def test_upscale_repeats_pixels() -> None:
    frame = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    big = upscale(frame, 3)
    assert big.shape == (6, 6, 3)
    np.testing.assert_array_equal(big[::3, ::3], frame)
    assert upscale(frame, 1) is frame


def test_unknown_formats_and_lossless_gifs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="video format must be one of"):
        write_video(tmp_path / "episode.avi", frames())
    with pytest.raises(ValueError, match="video format must be one of"):
        write_video(io.BytesIO(), frames())
    with pytest.raises(ValueError, match=r"mp4 to a path"):
        write_video(io.BytesIO(), frames(), format="mp4")
    with pytest.raises(ValueError, match="only mp4 videos can be lossless"):
        write_video(tmp_path / "episode.gif", frames(), lossless=True)
