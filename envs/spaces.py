"""The observation contract shared by every instructcraft env (see the README)."""

from __future__ import annotations

import string

import numpy as np
from gymnasium import spaces

INSTRUCTION_MAX_LENGTH = 256
INSTRUCTION_CHARSET = string.printable


def instruction_space() -> spaces.Text:
    return spaces.Text(max_length=INSTRUCTION_MAX_LENGTH, min_length=0, charset=INSTRUCTION_CHARSET)


def observation_space(height: int, width: int) -> spaces.Dict:
    """``Dict(image=Box(0, 255, (H, W, 3), uint8), instruction=Text)``."""
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, (height, width, 3), np.uint8),
            "instruction": instruction_space(),
        }
    )


def check_instruction(instruction: str) -> str:
    """Reject instructions that the Text space cannot hold, naming the rule that failed."""
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
    if len(instruction) > INSTRUCTION_MAX_LENGTH:
        raise ValueError(
            f"instruction has {len(instruction)} characters, the limit is {INSTRUCTION_MAX_LENGTH}: shorten it"
        )
    bad = sorted({c for c in instruction if c not in INSTRUCTION_CHARSET})
    if bad:
        raise ValueError(f"instruction contains non-printable characters {bad!r}: use printable ASCII")
    return instruction
