from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import envs
from envs.data.collect import collect
from envs.data.store import Dataset, DatasetError

pytest.importorskip("minari")
from envs.data.minari import export_minari, import_minari


@pytest.fixture(autouse=True)
def minari_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def test_export_then_import_is_lossless(tmp_path: Path) -> None:
    collect(
        str(tmp_path / "demos"),
        envs.CRAFTER_ID,
        "crafter_planner",
        3,
        tasks=["collect_wood", "eat_cow"],
        seed=4,
    )
    exported = export_minari(tmp_path / "demos", "instructcraft/crafter-test-v0")
    assert exported["episodes"] == 3
    summary = import_minari("instructcraft/crafter-test-v0", tmp_path / "back")
    assert summary["env_id"] == envs.CRAFTER_ID  # the env spec travels with the dataset
    original, back = Dataset(tmp_path / "demos"), Dataset(tmp_path / "back")
    for i in range(3):
        a, b = original.episode(i), back.episode(i)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        np.testing.assert_array_equal(a.terminated, b.terminated)
        assert (a.instruction, a.success) == (b.instruction, b.success)


def test_import_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot load Minari dataset 'nobody/none-v0'"):
        import_minari("nobody/none-v0", tmp_path / "x")
