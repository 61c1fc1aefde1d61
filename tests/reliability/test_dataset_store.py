"""The dataset store reads only its own files: index entries outside episodes/ are refused,
`data info` names unreadable episodes, only store-written files are called safe to delete, and
Dataset.chunk says how it treats a range past the episode's end."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from envs.data.store import Dataset, DatasetError, episode_file


@pytest.fixture
def demos(crafter_demos: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(crafter_demos, tmp_path / "demos"))


def point_episode_at(root: Path, episode: int, file: str) -> None:
    lines = (root / "index.jsonl").read_text().splitlines()
    entry = json.loads(lines[episode])
    entry["file"] = file
    lines[episode] = json.dumps(entry)
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "nested"])
def test_index_entries_outside_episodes_are_refused(kind: str, demos: Path, tmp_path: Path) -> None:
    # A file elsewhere with the same bytes (and so a matching sha256) as episode 1.
    outside = tmp_path / "x.npz"
    shutil.copy(demos / episode_file(1), outside)
    file = {"dotdot": "../x.npz", "absolute": str(outside), "nested": "episodes/../../x.npz"}[kind]
    point_episode_at(demos, 1, file)
    with pytest.raises(DatasetError, match=r"index.jsonl line 2: episode file .* is outside"):
        Dataset(demos)
    result = run_cli("data", "check", str(demos), check=False)
    assert result.returncode == 2 and "is outside" in result.stderr


def test_a_symlink_out_of_episodes_is_refused(demos: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.npz"
    target = demos / episode_file(1)
    shutil.move(target, outside)
    os.symlink(outside, target)
    dataset = Dataset(demos)
    with pytest.raises(DatasetError, match=r"is a link to .* outside"):
        dataset.chunk(1, 0, 4)
    result = run_cli("data", "check", str(demos), check=False)
    assert result.returncode == 1 and "outside" in result.stdout


def test_data_info_names_missing_and_corrupt_episodes(demos: Path) -> None:
    (demos / episode_file(0)).unlink()
    corrupt = demos / episode_file(2)
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    result = run_cli("data", "info", str(demos), check=False)
    assert result.returncode == 1
    assert "1 episode(s) with missing files (counted above): 0" in result.stderr
    assert "1 episode(s) with corrupt files (counted above): 2" in result.stderr
    summary = json.loads(run_cli("data", "info", str(demos), "--json", check=False).stdout)
    assert summary["unreadable"] == {"missing": [0], "corrupt": [2]}


def test_a_clean_dataset_has_nothing_unreadable(crafter_demos: Path) -> None:
    assert Dataset(crafter_demos).summary()["unreadable"] == {"missing": [], "corrupt": []}


def test_only_store_files_are_called_safe_to_delete(demos: Path) -> None:
    (demos / "episodes" / "keep.txt").write_text("the user's notes")
    (demos / "episodes" / ".000009.npz.tmp-123").write_bytes(b"torn")
    result = run_cli("data", "check", str(demos))
    assert (
        "episodes/.000009.npz.tmp-123 is not in index.jsonl (left by an interrupted write; safe to delete)"
        in (result.stdout)
    )
    assert "keep.txt was not written by instructcraft (not part of the dataset; left alone)" in result.stdout
    assert "keep.txt is not in index.jsonl" not in result.stdout


def test_chunk_past_the_end_is_clipped_or_padded_with_a_mask(crafter_demos: Path) -> None:
    dataset = Dataset(crafter_demos)
    length = dataset.episodes[0]["length"]
    clipped = dataset.chunk(0, length - 2, length + 3)
    assert len(clipped["actions"]) == len(clipped["images"]) == 2 and "mask" not in clipped
    padded = dataset.chunk(0, length - 2, length + 3, pad=True)
    assert {name: len(array) for name, array in padded.items()} == dict.fromkeys(padded, 5)
    np.testing.assert_array_equal(padded["mask"], [True, True, False, False, False])
    np.testing.assert_array_equal(padded["actions"][:2], clipped["actions"])
    assert not padded["images"][2:].any()
    with pytest.raises(IndexError, match=f"start must be in \\[0, {length}\\)"):
        dataset.chunk(0, length, length + 4)
