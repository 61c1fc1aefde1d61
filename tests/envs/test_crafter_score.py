"""crafter's stats.jsonl records and score, checked against crafter's own Recorder and the
score's definition."""

from __future__ import annotations

import json
import math
from pathlib import Path

import crafter
import pytest

from envs.crafter_score import (
    ACHIEVEMENTS,
    crafter_score,
    read_stats,
    stats_record,
    success_rates,
    write_stats,
)


def test_records_match_what_crafters_recorder_writes(tmp_path: Path) -> None:
    env = crafter.Recorder(
        crafter.Env(seed=1, length=30), tmp_path, save_stats=True, save_video=False, save_episode=False
    )
    env.reset()
    total, done, length, info = 0.0, False, 0, {}
    while not done:
        _, _, done, info = env.step(5)  # "do": collects whatever is in front
        total += info["reward"]
        length += 1
    theirs = json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[-1])
    assert stats_record(length, total, info["achievements"]) == theirs


def test_score_is_the_geometric_mean_of_one_plus_the_rates() -> None:
    episodes = [{"collect_wood": 3, "place_table": 1}, {"collect_wood": 1}, {}, {"collect_wood": 0}]
    rates = success_rates(episodes)
    assert rates["collect_wood"] == 50.0 and rates["place_table"] == 25.0 and rates["collect_diamond"] == 0.0
    expected = math.exp((math.log(51) + math.log(26)) / 22) - 1
    assert crafter_score(rates) == pytest.approx(expected)
    assert crafter_score([100.0] * 22) == pytest.approx(100.0)
    assert crafter_score([0.0] * 22) == 0.0
    with pytest.raises(ValueError, match="at least one achievement"):
        crafter_score([])
    with pytest.raises(ValueError, match=r"percentages in \[0, 100\]"):
        crafter_score([0.5] * 21 + [101.0])


def test_stats_round_trip_and_reject_unknown_names(tmp_path: Path) -> None:
    records = [stats_record(10, 1.04, {"collect_wood": 2}), stats_record(3, -0.2, {})]
    path = write_stats(tmp_path / "out" / "stats.jsonl", records)
    assert read_stats(path) == records
    assert set(records[0]) == {"length", "reward"} | {f"achievement_{name}" for name in ACHIEVEMENTS}
    assert records[0]["reward"] == 1.0
    with pytest.raises(ValueError, match="unknown crafter achievement"):
        stats_record(1, 0.0, {"fly": 1})
    (tmp_path / "bad.jsonl").write_text('{"length": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_stats(tmp_path / "bad.jsonl")
