"""Captions and attention images draw non-ASCII instructions as letters, not boxes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from agent.rollout import caption, caption_font


def ink(text: str) -> np.ndarray:
    image = Image.new("L", (40, 20))
    ImageDraw.Draw(image).text((2, 2), text, fill=255, font=caption_font())
    return np.asarray(image)


def test_letters_beyond_ascii_have_their_own_glyphs() -> None:
    missing = ink("\uffff")  # a code point no font draws: the font's "missing glyph" box
    for letter in ["ö", "é", "ß", "ж", "λ"]:
        assert not np.array_equal(ink(letter), missing), f"{letter!r} is drawn as the missing-glyph box"
    assert not np.array_equal(ink("ö"), ink("o"))


def test_a_caption_keeps_the_frame_and_adds_the_text_bar() -> None:
    frame = np.full((64, 64, 3), 7, np.uint8)
    out = caption(frame, ["öffne die Tür", "step 0"])
    assert out.shape == (64 * 4 + 44, 64 * 4, 3)
    assert (out[: 64 * 4] == 7).all() and out[64 * 4 :].max() == 255
