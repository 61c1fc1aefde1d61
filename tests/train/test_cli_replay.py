"""`instructcraft data check --replay`: noisy collections replay from their executed actions."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli

import envs
from envs.data.collect import collect


def test_data_check_replay_through_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    collect(str(data), envs.CRAFTER_ID, "crafter_planner", 2, tasks=["collect_wood"], seed=11, noise=0.3)
    result = run_cli("data", "check", str(data), "--replay")
    assert "replay: 2 of 2 replayed episodes identical" in result.stdout
    # Plant a different executed action: the replay must find the step right after it.
    index = data / "index.jsonl"
    entries = [json.loads(line) for line in index.read_text().splitlines()]
    executed = entries[1]["extra"]["executed_actions"]
    turn = {1: 2, 2: 1, 3: 4, 4: 3}
    planted = next(t for t, action in enumerate(executed) if action in turn)
    executed[planted] = turn[executed[planted]]
    index.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    failed = run_cli("data", "check", str(data), "--replay", check=False)
    assert failed.returncode == 1
    assert f"episode 1: first mismatch at step {planted + 1}" in failed.stdout
