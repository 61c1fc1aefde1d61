"""The action-space spec (envs.spaces): one definition for datasets, importers and the agent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

import envs.data.store
from envs.data.store import DatasetError, DatasetWriter
from envs.minecraft.actions import VPT_LAYOUT
from envs.spaces import action_space_from_spec, action_space_spec


@pytest.mark.parametrize(
    ("space", "spec"),
    [
        (spaces.Discrete(17), {"type": "Discrete", "n": 17}),
        (spaces.MultiDiscrete([2, 11, 3]), {"type": "MultiDiscrete", "nvec": [2, 11, 3]}),
    ],
)
def test_spec_round_trip(space: spaces.Space, spec: dict) -> None:
    assert action_space_spec(space) == spec
    assert all(type(n) is int for n in spec.get("nvec", [spec.get("n")]))
    assert action_space_from_spec(spec) == space
    assert action_space_spec(action_space_from_spec(spec)) == spec


def test_spaces_are_read_by_class_name() -> None:
    Discrete = type("Discrete", (), {})  # another library's space of that name
    space = Discrete()
    space.n = np.int64(5)
    assert action_space_spec(space) == {"type": "Discrete", "n": 5}


def test_other_spaces_and_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="only Discrete or MultiDiscrete action spaces have a spec, got Box"):
        action_space_spec(spaces.Box(0, 1, (2,)))
    with pytest.raises(ValueError, match="Discrete or MultiDiscrete"):
        action_space_from_spec({"type": "Box"})


def test_the_store_and_the_minecraft_layout_use_the_one_spec(tmp_path: Path) -> None:
    assert envs.data.store.action_space_spec is action_space_spec
    assert VPT_LAYOUT.spec() == action_space_spec(VPT_LAYOUT.space())
    assert VPT_LAYOUT.spec() == {"type": "MultiDiscrete", "nvec": VPT_LAYOUT.nvec}
    with pytest.raises(DatasetError, match="the dataset stores Discrete or MultiDiscrete actions, got Box"):
        DatasetWriter(tmp_path / "d", env_id="x", image_shape=(4, 4, 3), action_space=spaces.Box(0, 1, (2,)))
