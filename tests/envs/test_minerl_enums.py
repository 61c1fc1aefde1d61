"""MineRL v0.4 Enum action columns stored as strings or as minerl's integer indices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from minecraft_fixtures import write_minerl_stream

from envs.data.importers import import_minerl
from envs.data.store import Dataset, DatasetError
from envs.minecraft import MINERL_TASKS

# minerl 0.4.4 ``Enum.__init__``: ``self.values = np.array(sorted(values))``; an integer action
# i is ``self.values[i]``. ObtainDiamond's place Enum, sorted, written out by hand:
PLACE_SORTED = ["cobblestone", "crafting_table", "dirt", "furnace", "none", "stone", "torch"]


def _rewrite(stream: Path, **columns: np.ndarray) -> None:
    arrays = dict(np.load(stream / "rendered.npz"))
    arrays.update({f"action${name}": column for name, column in columns.items()})
    np.savez(stream / "rendered.npz", **arrays)


@pytest.mark.parametrize("env_name", ["MineRLObtainDiamond-v0", "MineRLNavigateDense-v0"])
def test_string_and_integer_enum_columns_give_the_same_dataset(tmp_path: Path, env_name: str) -> None:
    for encoding in ("str", "index"):
        write_minerl_stream(tmp_path / encoding, env_name, "s0", 40, seed=3, enums_as=encoding)
        import_minerl(tmp_path / encoding, tmp_path / f"data_{encoding}")
    text = np.load(tmp_path / "str" / env_name / "s0" / "rendered.npz")
    index = np.load(tmp_path / "index" / env_name / "s0" / "rendered.npz")
    enums = MINERL_TASKS[env_name.removeprefix("MineRL").removesuffix("-v0")].enums
    for name, _ in enums:
        assert text[f"action${name}"].dtype.kind == "U" and index[f"action${name}"].dtype.kind == "i"
    from_text = Dataset(tmp_path / "data_str").episode(0)
    from_index = Dataset(tmp_path / "data_index").episode(0)
    np.testing.assert_array_equal(from_index.actions, from_text.actions)
    assert len(np.unique(from_text.actions[:, 10:])) > 1  # the enum components vary


def test_an_integer_means_minerls_sorted_value(tmp_path: Path) -> None:
    root = tmp_path / "minerl"
    write_minerl_stream(root, "MineRLObtainDiamond-v0", "s0", 7)
    stream = root / "MineRLObtainDiamond-v0" / "s0"
    assert sorted(dict(MINERL_TASKS["ObtainDiamond"].enums)["place"]) == PLACE_SORTED
    _rewrite(stream, place=np.arange(7), craft=np.array(["none"] * 7))
    import_minerl(root, tmp_path / "data")
    episode = Dataset(tmp_path / "data").episode(0)
    place = dict(MINERL_TASKS["ObtainDiamond"].enums)["place"]
    assert [place[i] for i in episode.actions[:, 10]] == PLACE_SORTED
    assert episode.actions[4, 10] == 0  # index 4 is "none", the layout's no-op


def test_an_out_of_range_integer_names_the_file_column_and_range(tmp_path: Path) -> None:
    root = tmp_path / "minerl"
    write_minerl_stream(root, "MineRLObtainDiamond-v0", "s0", 5, enums_as="index")
    stream = root / "MineRLObtainDiamond-v0" / "s0"
    _rewrite(stream, nearbySmelt=np.array([0, 1, 2, 3, 0]))
    with pytest.raises(
        DatasetError, match=r"s0/rendered\.npz: 'action\$nearbySmelt' holds index 3, outside \[0, 3\)"
    ):
        import_minerl(root, tmp_path / "a")
    _rewrite(stream, nearbySmelt=np.array([0, -1, 0, 0, 0]))
    with pytest.raises(DatasetError, match=r"'action\$nearbySmelt' holds index -1, outside \[0, 3\)"):
        import_minerl(root, tmp_path / "b")
