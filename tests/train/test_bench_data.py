"""``bench data``: a synthetic index the store opens, and the command in --quick mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from envs.data.format import read_index
from envs.data.store import Dataset
from train.bench.data import open_in_fresh_process, write_synthetic_index


def test_the_synthetic_index_is_a_dataset_the_store_opens(tmp_path: Path) -> None:
    write_synthetic_index(tmp_path / "d", 2_500)
    dataset = Dataset(tmp_path / "d")
    assert len(dataset) == 2_500 and list(dataset.episodes) == read_index(tmp_path / "d")[0]
    assert dataset.episodes[2_499]["file"] == "episodes/002/002499.npz"
    parsed = open_in_fresh_process(tmp_path / "d", save_snapshot=True)
    snapshot = open_in_fresh_process(tmp_path / "d")
    assert parsed["episodes"] == snapshot["episodes"] == 2_500 and parsed["steps"] == snapshot["steps"]
    assert list(Dataset(tmp_path / "d").episodes) == list(dataset.episodes)
    assert snapshot["rss_after_mb"] >= snapshot["rss_before_mb"] > 0


@pytest.mark.slow
def test_bench_data_quick() -> None:
    results = json.loads(run_cli("bench", "data", "--quick", "--json").stdout)
    assert results["index_entries"] == 20_000 and results["chunk_episodes"] == 300
    for key in ("open_s", "rss_after_open_mb", "open_without_snapshot_s", "chunk16_read_ms_median"):
        assert results[key] > 0, key
    assert set(results["goals"]) == {"open_s", "rss_after_open_mb"}
