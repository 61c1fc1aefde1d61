"""Agents that ship with the package: ``pretrained:<name>`` wherever a checkpoint is expected.

Each is a checkpoint folder (``config.json`` + ``model.safetensors``; the frozen text encoder
comes from its own package) under ``agent/pretrained/<name>/``, with a ``card.json`` saying how
it was trained and what it measured. A newcomer can evaluate, roll out and look at the attention
of a working agent without training one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PREFIX = "pretrained:"
ROOT = Path(__file__).resolve().parent / "pretrained"


def available() -> list[str]:
    """Names of the shipped agents."""
    if not ROOT.is_dir():
        return []
    return sorted(p.name for p in ROOT.iterdir() if (p / "config.json").is_file())


def resolve_checkpoint(checkpoint: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``pretrained:<name>`` -> its folder; any other value is returned unchanged."""
    text = os.fspath(checkpoint)
    if not text.startswith(PREFIX):
        return checkpoint
    name = text[len(PREFIX) :]
    if name not in available():
        raise ValueError(
            f"no shipped agent {name!r}; shipped: {', '.join(PREFIX + n for n in available()) or 'none'}"
        )
    return str(ROOT / name)


def card(name: str) -> dict[str, Any]:
    """How a shipped agent was trained and what it measured (its ``card.json``)."""
    folder = Path(resolve_checkpoint(PREFIX + name))
    return json.loads((folder / "card.json").read_text())
