"""CLI smoke tests through the installed console script, with tiny budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from envs.data.store import episode_file


def test_envs_lists_ids_and_tasks() -> None:
    rows = json.loads(run_cli("envs", "--json").stdout)
    ids = [row["env_id"] for row in rows]
    assert "instructcraft/Crafter-Instruct-v0" in ids and "instructcraft/BabyAI-GoToLocal-v0" in ids
    assert "eat_cow" in rows[0]["tasks"]
    assert "collect_wood" in run_cli("envs").stdout


def test_collect_info_check(tmp_path: Path) -> None:
    out = tmp_path / "demos"
    result = run_cli(
        "collect",
        "--env",
        "instructcraft/Crafter-Instruct-v0",
        "--episodes",
        "4",
        "--out",
        str(out),
        "--tasks",
        "collect_wood",
        "eat_cow",
        "--workers",
        "2",
        "--seed",
        "1",
        "--json",
    )
    stats = json.loads(result.stdout)
    assert stats["episodes"] == 4 and stats["success_rate"] == 1.0
    assert "ep/s" in result.stderr  # the progress bar
    info = json.loads(run_cli("data", "info", str(out), "--json").stdout)
    assert info["episodes"] == 4 and set(info["tasks"]) == {"collect_wood", "eat_cow"}
    assert "collect_wood" in run_cli("data", "info", str(out)).stdout
    assert "ok: 4 episodes" in run_cli("data", "check", str(out)).stdout
    episode = out / episode_file(2)
    episode.write_bytes(episode.read_bytes()[:100])
    bad = run_cli("data", "check", str(out), check=False)
    assert bad.returncode == 1 and "000002.npz (episode 2)" in bad.stdout


def test_collect_babyai(tmp_path: Path) -> None:
    stats = json.loads(
        run_cli(
            "collect",
            "--env",
            "instructcraft/BabyAI-GoToLocal-v0",
            "--episodes",
            "3",
            "--out",
            str(tmp_path / "b"),
            "--workers",
            "1",
            "--json",
        ).stdout
    )
    assert stats["kept"] == 3


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("data", "info", str(tmp_path / "missing"), check=False)
    assert result.returncode == 2 and "is not a directory" in result.stderr
    result = run_cli(
        "collect",
        "--env",
        "instructcraft/Crafter-Instruct-v0",
        "--episodes",
        "1",
        "--out",
        str(tmp_path / "x"),
        "--tasks",
        "fly",
        check=False,
    )
    assert result.returncode == 2 and "unknown Crafter-Instruct task(s) ['fly']" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_bench_env_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reported number is there and plausible: the wrappers cost at most a few times the
    raw env (loose: a busy CI machine), the expert collects successfully, chunk reads beat
    decompressing everything."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # its local Ray writes no ~/.ray/auth_token
    results = json.loads(run_cli("bench", "env", "--quick", "--json").stdout)
    rates = ("crafter_raw_sps", "crafter_instruct_sps", "babyai_raw_sps", "babyai_sps", "collect_episodes_per_s",
             "collect_steps_per_s", "dataset_chunk16_read_ms", "dataset_full_decompress_ms")  # fmt: skip
    for key in rates:
        assert 0 < results[key] < 1e7, (key, results[key])
    for key in ("crafter_instruct_over_raw_sps", "babyai_over_raw_sps"):
        assert 0.2 < results[key] < 5, (key, results[key])
    assert results["crafter_instruct_over_raw_sps"] == pytest.approx(
        results["crafter_instruct_sps"] / results["crafter_raw_sps"]
    )
    assert results["collect_success_rate"] >= 0.8 and results["collect_workers"] == 2
    assert results["dataset_chunk16_read_ms"] < results["dataset_full_decompress_ms"]
    assert set(results["goals"]) == {
        "crafter_instruct_over_raw_sps",
        "babyai_over_raw_sps",
        "ray_over_pool_collect_eps",
    }
    # the same collection through a local Ray and through the pool, side by side
    assert 0.1 < results["ray_over_pool_collect_eps"] < 10
    assert results["ray_over_pool_collect_eps"] == pytest.approx(
        results["ray_collect_episodes_per_s"] / results["pool_collect_episodes_per_s"]
    )
    assert results["ray_start_s"] > 0


@pytest.mark.slow
def test_demo_runs_end_to_end_with_tiny_budgets(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_cli(
        "demo",
        "--out",
        str(out),
        "--episodes",
        "8",
        "--bc-steps",
        "3",
        "--eval-episodes",
        "2",
        "--dagger-rounds",
        "1",
        "--dagger-episodes",
        "2",
        "--dagger-steps",
        "2",
        "--tasks",
        "collect_wood",
        "eat_cow",
    )
    assert "instruction sensitivity" in result.stdout and "outputs:" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bc"]["steps"] == 3 and set(summary["eval"]) == {"correct", "swapped"}
    assert (out / "bc" / "checkpoint" / "model.safetensors").exists()
    # One DAgger round after BC: 2 labelled rollouts aggregated, and the evaluated policy is its own.
    rounds = summary["dagger"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[0]["trained_from"].endswith("checkpoint")
    assert rounds[1]["dataset_episodes"] == summary["dataset"]["episodes"] + 2
    assert summary["checkpoint"] == str(out / "dagger" / "checkpoint")
    assert (out / "dagger" / "checkpoint" / "model.safetensors").exists()
    assert Path(summary["video"][0]).stat().st_size > 1000


@pytest.mark.slow
def test_demo_without_dagger_evaluates_the_bc_policy(tmp_path: Path) -> None:
    from train.demo import run_demo

    out = tmp_path / "demo"
    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    code = run_demo(
        str(out), episodes=4, workers=1, bc_steps=2, eval_episodes=1, tasks=["collect_wood"], config=tiny,
        dagger_rounds=0,
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0 and summary["dagger"] is None and "dagger" not in summary["timings_s"]
    assert summary["checkpoint"] == summary["bc"]["checkpoint"] and not (out / "dagger").exists()


@pytest.mark.slow
def test_bench_bc_quick_compares_the_default_with_the_previous_one() -> None:
    """`bench bc` reports real (unpadded) steps/s of the current default and of the previous one,
    their ratio, and the share of real steps in each one's rows."""
    results = json.loads(run_cli("bench", "bc", "--quick", "--json").stdout)
    for key in (
        "previous_default_real_steps_per_s",
        "default_real_steps_per_s",
        "loader_step_ms",
        "inmemory_step_ms",
    ):
        assert 0 < results[key] < 1e7, (key, results[key])
    assert results["real_steps_per_s_default_over_previous"] == pytest.approx(
        results["default_real_steps_per_s"] / results["previous_default_real_steps_per_s"]
    )
    for key in ("previous_default_real_fraction", "default_real_fraction"):
        assert 0 < results[key] <= 1
    for key in (
        "loader_over_inmemory_step_time",
        "loader_over_inmemory_step_time_warm",
        "loader_over_inmemory_step_time_1_worker",
        "fp32_over_bf16_autocast_step_time",
    ):
        assert 0 < results[key] < 100, (key, results[key])
    assert isinstance(results["cpu_native_bf16"], bool)
    assert set(results["goals"]) == {
        "loader_over_inmemory_step_time",
        "real_steps_per_s_default_over_previous",
    }


def test_bench_bc_previous_default_is_the_pre_change_model_whatever_todays_defaults() -> None:
    """The previous default is spelled out field by field: filling it from today's defaults once
    measured an IMPALA stack the project never shipped (one 32-wide stack, 81 tokens)."""
    import dataclasses

    from policies import VisionConfig
    from train.bench import PREVIOUS_BC_DEFAULT

    previous = dataclasses.replace(VisionConfig(), **PREVIOUS_BC_DEFAULT["vision"])
    assert (previous.encoder, previous.channels, previous.frame_tokens) == ("impala", (16, 32, 32), 16)
    assert not previous.position_embedding and previous.token_pooling == "average"
    assert previous.grid == (8, 8) and PREVIOUS_BC_DEFAULT["pack"] is False


def test_bench_choices_are_the_registered_benchmarks() -> None:
    """The parser names the benchmarks without importing them; the registry is the truth."""
    import argparse

    from train.bench import BENCHES
    from train.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    what = next(a for a in commands.choices["bench"]._actions if a.dest == "what")
    assert list(what.choices) == list(BENCHES)


def test_every_command_runs_the_handler_beside_its_parser() -> None:
    """Each command's parser and handler live in one module of train/cli/."""
    import argparse

    from train.cli import COMMANDS, build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    adders = {add.__name__: add for add in COMMANDS}
    assert len(commands.choices) == len(adders) == len(COMMANDS)
    for name, parser in commands.choices.items():
        handler = parser.get_default("func")
        assert handler.__name__ == f"run_{name}", name
        assert handler.__module__ == adders[f"add_{name}_parser"].__module__, name
