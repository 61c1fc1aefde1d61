"""Export to Minari then import gives back every episode field by field (task, instruction,
seed, expert, success, extras such as the DART label noise), and export says where it wrote."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from envs.data.store import Dataset

pytest.importorskip("minari")
from envs.data.minari import export_minari, import_minari


@pytest.fixture(autouse=True)
def minari_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def test_round_trip_is_exact_field_by_field(crafter_demos: Path, tmp_path: Path) -> None:
    export_minari(crafter_demos, "instructcraft/roundtrip-v0")
    import_minari("instructcraft/roundtrip-v0", tmp_path / "back")
    original, back = Dataset(crafter_demos), Dataset(tmp_path / "back")
    assert len(original) == len(back) == 3
    for number in range(3):
        a, b = original.episode(number), back.episode(number)
        for field in fields(a):
            left, right = getattr(a, field.name), getattr(b, field.name)
            if isinstance(left, np.ndarray):
                np.testing.assert_array_equal(left, right, err_msg=field.name)
                assert left.dtype == right.dtype, field.name
            else:
                assert left == right, (field.name, left, right)
        # noisy collections record what was executed beside the expert labels
        assert set(a.extra) == {"label_noise", "executed_actions"} and a.extra["label_noise"] == 0.2
        assert len(a.extra["executed_actions"]) == len(a.actions) and a.seed == 4 + number
        keys = ("task", "instruction", "seed", "success", "length", "return", "sha256", "extra")
        assert {k: original.episodes[number].get(k) for k in keys} == {
            k: back.episodes[number].get(k) for k in keys
        }


def test_export_prints_where_it_wrote(crafter_demos: Path, minari_home: Path) -> None:
    result = run_cli("export", "minari", str(crafter_demos), "--id", "instructcraft/printed-v0")
    where = result.stdout.strip().split(" in ")[-1]
    assert Path(where).is_dir() and Path(where).is_relative_to(minari_home)
