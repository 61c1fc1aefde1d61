"""The two copies of the write rules (envs' for datasets, policies' for everything above) say
the same: one mount point for a path, one sentence for a full disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from envs.data.format import DatasetError, _mount_point, disk_full_error
from policies.files import describe_write_failure, mount_point

FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "relative",
    ["file.json", "missing/deeper/file.json", "missing/../file.json", "."],
)
def test_both_copies_find_the_same_mount_point(tmp_path: Path, relative: str) -> None:
    path = tmp_path / relative
    assert _mount_point(path) == mount_point(path)
    assert _mount_point(path).exists() and os.path.ismount(_mount_point(path))


def test_the_mount_point_is_that_of_the_nearest_existing_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder not made yet is no mount point, whatever the system says about its name.
    mounted = {tmp_path / "missing"}
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) in mounted or Path(path) == Path("/"))
    path = tmp_path / "missing" / "file.json"
    assert _mount_point(path) == mount_point(path) == Path("/")


@pytest.mark.parametrize("error", [FULL, OSError(errno.EDQUOT, "Disk quota exceeded")])
def test_a_full_disk_reads_the_same_from_envs_and_policies(tmp_path: Path, error: OSError) -> None:
    path = tmp_path / "missing" / "episode.npz"
    intact = "the 2 earlier episodes are intact"
    dataset_error = disk_full_error(path, error, intact)
    assert isinstance(dataset_error, DatasetError)
    message = str(dataset_error)
    assert message == describe_write_failure(error, path, intact)
    assert "\n" not in message
    assert message.startswith(f"no space left on device while writing {path}; {intact}. ")
    assert f"Free some space on {mount_point(path)}" in message


def test_other_errors_stay_themselves(tmp_path: Path) -> None:
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert disk_full_error(tmp_path / "file", denied, "x") is denied
    assert describe_write_failure(denied, tmp_path / "file", "x").startswith(f"could not write {tmp_path}")


# -- Minari export: its compressed file goes through the store's atomic write ---------------------


def _minari_like_file(path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as handle:
        episode = handle.create_group("episode_0")
        episode.attrs["id"] = 0
        episode.create_dataset("images", data=np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3))
        episode.create_dataset("actions", data=np.arange(4))
        episode.create_dataset("instruction", data=["collect wood"] * 5, dtype=h5py.string_dtype())


def test_the_compressed_minari_file_is_synced_before_it_replaces_the_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envs.data.minari import _compress_hdf5

    path = tmp_path / "main_data.hdf5"
    _minari_like_file(path)
    before = path.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(DatasetError) as caught:
        _compress_hdf5(path)
    monkeypatch.undo()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"no space left on device while writing {path}; main_data.hdf5 was left as")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["main_data.hdf5"]  # no temporary file left


def test_the_compressed_minari_file_holds_the_same_arrays(tmp_path: Path) -> None:
    import h5py

    from envs.data.minari import _compress_hdf5

    path = tmp_path / "main_data.hdf5"
    _minari_like_file(path)
    _compress_hdf5(path)
    with h5py.File(path, "r") as handle:
        episode = handle["episode_0"]
        assert episode.attrs["id"] == 0
        assert episode["images"].compression == "gzip"
        np.testing.assert_array_equal(
            episode["images"][()], np.arange(240, dtype=np.uint8).reshape(5, 4, 4, 3)
        )
        np.testing.assert_array_equal(episode["actions"][()], np.arange(4))
        assert [text.decode() for text in episode["instruction"][()]] == ["collect wood"] * 5
