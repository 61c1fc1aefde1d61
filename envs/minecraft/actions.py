"""MineRL's Dict actions <-> one factorized MultiDiscrete action.

Components, in order: each keyboard/mouse button (2 values), camera pitch and camera yaw (bins,
VPT-style mu-law quantization), then each Enum action of the env (its values, "none" first).

Key names and Enum values are copied from minerl's own env specs (v0.4.4:
``herobraine/env_specs/simple_embodiment.py``, ``navigate_specs.py``, ``obtain_specs.py``) and
the VPT action set from openai/Video-Pre-Training (``lib/actions.py``). Camera quantization
follows ``CameraQuantizer`` there: clip to +-maxval degrees, mu-law encode, uniform bins.
Nothing here imports minerl.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.errors import EnvsError
from envs.spaces import action_space_spec

# minerl v0.4 SIMPLE_KEYBOARD_ACTION, in minerl's order.
KEYBOARD_BUTTONS: tuple[str, ...] = ("forward", "back", "left", "right", "jump", "sneak", "sprint", "attack")

# openai/Video-Pre-Training lib/actions.py Buttons.ALL (MineRL 1.0 human-control buttons, no ESC).
VPT_BUTTONS: tuple[str, ...] = (
    "attack", "back", "forward", "jump", "left", "right", "sneak", "sprint", "use", "drop", "inventory",
    *(f"hotbar.{i}" for i in range(1, 10)),
)  # fmt: skip

NONE = "none"
OBTAIN_ENUMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("place", (NONE, "dirt", "stone", "cobblestone", "crafting_table", "furnace", "torch")),
    (
        "equip",
        (
            NONE,
            "air",
            "wooden_axe",
            "wooden_pickaxe",
            "stone_axe",
            "stone_pickaxe",
            "iron_axe",
            "iron_pickaxe",
        ),
    ),
    ("craft", (NONE, "torch", "stick", "planks", "crafting_table")),
    (
        "nearbyCraft",
        (
            NONE,
            "wooden_axe",
            "wooden_pickaxe",
            "stone_axe",
            "stone_pickaxe",
            "iron_axe",
            "iron_pickaxe",
            "furnace",
        ),
    ),
    ("nearbySmelt", (NONE, "iron_ingot", "coal")),
)
NAVIGATE_ENUMS: tuple[tuple[str, tuple[str, ...]], ...] = (("place", (NONE, "dirt")),)


class ActionError(EnvsError, ValueError):
    """An action that does not fit the layout; the message names the key and what is allowed."""


def camera_to_bins(degrees: np.ndarray, bins: int = 11, maxval: float = 10.0, mu: float = 10.0) -> np.ndarray:
    """Camera degrees (..., 2) [pitch, yaw] -> bin indices int64 (...,2) in [0, bins).

    Clipped to +-maxval, mu-law encoded (mu=0: linear), then ``bins`` uniform bins; with
    VPT's defaults (11 bins, maxval 10, mu 10) the middle bin (5) is exactly zero."""
    xy = np.clip(np.asarray(degrees, dtype=np.float64), -maxval, maxval)
    if mu > 0:
        xy = xy / maxval
        xy = np.sign(xy) * np.log1p(mu * np.abs(xy)) / np.log1p(mu) * maxval
    binsize = 2 * maxval / (bins - 1)
    return np.round((xy + maxval) / binsize).astype(np.int64)


def bins_to_camera(indices: np.ndarray, bins: int = 11, maxval: float = 10.0, mu: float = 10.0) -> np.ndarray:
    """Bin indices (..., 2) -> camera degrees float32 (..., 2), the inverse of ``camera_to_bins``."""
    binsize = 2 * maxval / (bins - 1)
    xy = np.asarray(indices, dtype=np.float64) * binsize - maxval
    if mu > 0:
        xy = xy / maxval
        xy = np.sign(xy) * ((1.0 + mu) ** np.abs(xy) - 1.0) / mu * maxval
    return xy.astype(np.float32)


@dataclass(frozen=True)
class ActionLayout:
    """How one MineRL action space is factorized."""

    buttons: tuple[str, ...] = KEYBOARD_BUTTONS
    enums: tuple[tuple[str, tuple[str, ...]], ...] = ()
    camera_bins: int = 11
    camera_maxval: float = 10.0
    camera_mu: float = 10.0

    def __post_init__(self) -> None:
        if self.camera_bins < 3 or self.camera_bins % 2 == 0:
            raise ActionError(
                f"camera_bins must be odd and >= 3 (a zero bin in the middle), got {self.camera_bins}"
            )
        if self.camera_maxval <= 0 or self.camera_mu < 0:
            raise ActionError("camera_maxval must be > 0 and camera_mu >= 0")

    @property
    def components(self) -> list[str]:
        return [*self.buttons, "camera_pitch", "camera_yaw", *(name for name, _ in self.enums)]

    @property
    def nvec(self) -> list[int]:
        return [2] * len(self.buttons) + [self.camera_bins] * 2 + [len(values) for _, values in self.enums]

    def space(self) -> spaces.MultiDiscrete:
        """The env's action space: one component per entry of ``components``."""
        return spaces.MultiDiscrete(self.nvec)

    def spec(self) -> dict[str, Any]:
        """The JSON action-space spec the dataset and policy config store."""
        return action_space_spec(self.space())

    def describe(self) -> dict[str, Any]:
        """What each component means (stored in dataset metadata)."""
        return {
            "components": self.components,
            "enums": {name: list(values) for name, values in self.enums},
            "camera": {
                "bins": self.camera_bins,
                "maxval": self.camera_maxval,
                "mu": self.camera_mu,
                "order": "pitch, yaw",
            },
        }

    def _camera(self, degrees: np.ndarray) -> np.ndarray:
        return camera_to_bins(degrees, self.camera_bins, self.camera_maxval, self.camera_mu)

    def _enum_index(self, name: str, values: tuple[str, ...], value: Any) -> np.ndarray:
        array = np.asarray(value)
        if array.dtype.kind in "iu":
            if array.size and (array.min() < 0 or array.max() >= len(values)):
                raise ActionError(f"action {name!r}: index out of range [0, {len(values)})")
            return array.astype(np.int64)
        lookup = {v: i for i, v in enumerate(values)}
        flat = [lookup.get(str(v)) for v in array.reshape(-1)]
        bad = sorted({str(v) for v, i in zip(array.reshape(-1), flat, strict=True) if i is None})
        if bad:
            raise ActionError(f"action {name!r}: unknown value(s) {bad}; allowed: {list(values)}")
        return np.asarray(flat, dtype=np.int64).reshape(array.shape)

    def encode(self, action: Mapping[str, Any]) -> np.ndarray:
        """One MineRL Dict action -> int64 (A,). Missing buttons/enums count as 0/"none";
        keys the layout does not have are ignored (they cannot be represented)."""
        return self.encode_many({k: np.asarray(v)[None] for k, v in action.items()}, 1)[0]

    def encode_many(self, actions: Mapping[str, Any], steps: int) -> np.ndarray:
        """Column arrays (each with ``steps`` rows; camera (steps, 2)) -> int64 (steps, A)."""
        out = np.zeros((steps, len(self.nvec)), np.int64)
        for i, name in enumerate(self.buttons):
            if name in actions:
                column = np.asarray(actions[name]).reshape(-1)
                if len(column) != steps:
                    raise ActionError(f"action {name!r} has {len(column)} steps, expected {steps}")
                out[:, i] = (column != 0).astype(np.int64)
        offset = len(self.buttons)
        if "camera" in actions:
            camera = np.asarray(actions["camera"], dtype=np.float64).reshape(-1, 2)
            if len(camera) != steps:
                raise ActionError(f"action 'camera' has {len(camera)} steps, expected {steps}")
            out[:, offset : offset + 2] = self._camera(camera)
        else:
            out[:, offset : offset + 2] = self.camera_bins // 2
        for j, (name, values) in enumerate(self.enums):
            if name in actions:
                column = self._enum_index(name, values, np.asarray(actions[name]).reshape(-1))
                if len(column) != steps:
                    raise ActionError(f"action {name!r} has {len(column)} steps, expected {steps}")
                out[:, offset + 2 + j] = column
        return out

    def decode(self, vector: Any) -> dict[str, Any]:
        """int (A,) -> a MineRL Dict action (buttons 0/1, camera float32 (2,), enum strings)."""
        vector = np.asarray(vector, dtype=np.int64).reshape(-1)
        if len(vector) != len(self.nvec) or (vector < 0).any() or (vector >= np.asarray(self.nvec)).any():
            raise ActionError(f"action {vector.tolist()} does not fit MultiDiscrete({self.nvec})")
        action: dict[str, Any] = {name: int(vector[i]) for i, name in enumerate(self.buttons)}
        offset = len(self.buttons)
        action["camera"] = bins_to_camera(
            vector[offset : offset + 2], self.camera_bins, self.camera_maxval, self.camera_mu
        )
        for j, (name, values) in enumerate(self.enums):
            action[name] = values[int(vector[offset + 2 + j])]
        return action

    def noop(self) -> np.ndarray:
        return self.encode({})


VPT_LAYOUT = ActionLayout(buttons=VPT_BUTTONS)
