"""End to end without MineRL: MineRL-format recordings -> native dataset -> BC with factorized
heads -> an agent whose actions decode into MineRL Dict actions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers import run_cli
from minecraft_fixtures import vpt_tick, write_minerl_stream, write_vpt_recording

from agent import Agent
from envs.minecraft import ActionLayout

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


def test_import_minerl_then_bc_with_factorized_heads(tmp_path: Path) -> None:
    root = tmp_path / "MineRL"
    for i in range(3):
        write_minerl_stream(root, "MineRLTreechop-v0", f"v3_stream_{i}", 20, seed=i)
    summary = json.loads(
        run_cli("import", "minerl", str(root), "--out", str(tmp_path / "data"), "--json").stdout
    )
    assert summary == {
        "episodes": 3,
        "steps": 60,
        "env_id": "instructcraft/MineRL-Treechop-v0",
        "action_space": {"type": "MultiDiscrete", "nvec": [2] * 8 + [11, 11]},
    }
    assert "ok: 3 episodes" in run_cli("data", "check", str(tmp_path / "data")).stdout
    run_cli("bc", "--config", TINY, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"))
    agent = Agent.from_pretrained(tmp_path / "run" / "checkpoint")
    agent.reset("chop trees to collect logs")
    action = agent.act({"image": np.zeros((64, 64, 3), np.uint8)})
    minerl_action = ActionLayout().decode(action)
    assert set(minerl_action) == {
        "forward",
        "back",
        "left",
        "right",
        "jump",
        "sneak",
        "sprint",
        "attack",
        "camera",
    }


def test_import_vpt_and_export_minari_cli(tmp_path: Path) -> None:
    ticks = [vpt_tick(keys=["key.keyboard.w"], dx=float(i)) for i in range(6)]
    write_vpt_recording(tmp_path / "vpt", "rec", ticks)
    out = run_cli(
        "import",
        "vpt",
        str(tmp_path / "vpt"),
        "--out",
        str(tmp_path / "data"),
        "--instruction",
        "find a cave",
        "--json",
    )
    assert json.loads(out.stdout)["steps"] == 5
    env = {"MINARI_DATASETS_PATH": str(tmp_path / "minari"), "PATH": "/usr/bin:/bin"}
    exported = run_cli("export", "minari", str(tmp_path / "data"), "--id", "test/vpt-v0", "--json", env=env)
    assert json.loads(exported.stdout)["episodes"] == 1
    back = run_cli("import", "minari", "test/vpt-v0", "--out", str(tmp_path / "back"), "--json", env=env)
    assert json.loads(back.stdout)["steps"] == 5
    bad = run_cli("import", "minerl", str(tmp_path / "vpt"), "--out", str(tmp_path / "x"), check=False)
    assert bad.returncode == 2 and "no MineRL v0.4 streams" in bad.stderr
