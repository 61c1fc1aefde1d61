"""VPT frames are resized as VPT's loader does: cv2.resize(..., interpolation=cv2.INTER_LINEAR)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from envs.data.video import resize


def cv2_inter_linear(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2's INTER_LINEAR written pixel by pixel: src = (dst + 0.5) * scale - 0.5 per axis,
    clamped to the edge pixels, two bilinear taps, rounded to the nearest uint8."""
    height, width = frame.shape[:2]
    out = np.zeros((*size, frame.shape[2]), np.uint8)
    for y in range(size[0]):
        sy = min(max((y + 0.5) * height / size[0] - 0.5, 0.0), height - 1)
        y0 = int(sy)
        y1 = min(y0 + 1, height - 1)
        wy = sy - y0
        for x in range(size[1]):
            sx = min(max((x + 0.5) * width / size[1] - 0.5, 0.0), width - 1)
            x0 = int(sx)
            x1 = min(x0 + 1, width - 1)
            wx = sx - x0
            top = (1 - wx) * frame[y0, x0].astype(float) + wx * frame[y0, x1]
            bottom = (1 - wx) * frame[y1, x0].astype(float) + wx * frame[y1, x1]
            out[y, x] = np.floor((1 - wy) * top + wy * bottom + 0.5)
    return out


def torch_bilinear(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].double()
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return y[0].permute(1, 2, 0).add(0.5).floor().clamp(0, 255).to(torch.uint8).numpy()


def smooth_frame(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Random noise plus gradients and a hard edge, as uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (*shape, 3)).astype(np.float64)
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    ramp = (255 * xs / shape[1])[..., None]
    edge = np.where(ys < shape[0] // 3, 255.0, 0.0)[..., None]
    return np.clip(0.5 * noise + 0.3 * ramp + 0.2 * edge, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("source", "target"),
    [((360, 640), (64, 64)), ((360, 640), (128, 128)), ((48, 40), (96, 112)), ((7, 5), (64, 64))],
)
def test_resize_is_cv2_inter_linear(source: tuple[int, int], target: tuple[int, int]) -> None:
    frame = smooth_frame(source, seed=sum(source))
    out = resize(frame, target)
    assert out.shape == (*target, 3) and out.dtype == np.uint8
    for reference in (cv2_inter_linear(frame, target), torch_bilinear(frame, target)):
        assert np.abs(out.astype(int) - reference).max() <= 1


def test_pil_bilinear_antialiases_and_is_not_what_vpt_does() -> None:
    """The check above has teeth: PIL's BILINEAR filters over the whole footprint when shrinking."""
    frame = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(frame).resize((64, 64), Image.BILINEAR)).astype(int)
    reference = cv2_inter_linear(frame, (64, 64)).astype(int)
    assert np.abs(pil - reference).max() > 20
    assert np.abs(resize(frame, (64, 64)).astype(int) - reference).max() <= 1


def test_resize_keeps_a_frame_of_the_target_size_and_handles_grey() -> None:
    frame = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert resize(frame, (64, 64)) is frame
    grey = np.random.default_rng(2).integers(0, 256, (30, 50), dtype=np.uint8)
    expected = cv2_inter_linear(grey[..., None], (20, 10))[..., 0]
    assert np.abs(resize(grey, (20, 10)).astype(int) - expected).max() <= 1
