"""Checkpoints that travel: a run folder moved to another place still loads and evaluates and
records no absolute path of the machine that trained it; what we write takes the umask's
permissions; a Hugging Face Hub id loads from the hub's cache; ``export hub`` writes a folder to
upload."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_config, run_cli

from agent import Agent
from agent.pretrained import hub_snapshot, resolve_checkpoint
from envs.data.collect import collect
from policies import CheckpointError, InstructionPolicy

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
CRAFTER = "instructcraft/Crafter-Instruct-v0"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step BC run (configs/tiny.yaml) on two expert episodes, given absolute paths."""
    root = tmp_path_factory.mktemp("machine_a")
    collect(str(root / "demos"), CRAFTER, "crafter_planner", 2, tasks=["collect_wood"], seed=4)
    run_cli(
        "bc", "--config", TINY, "--set", "train.steps=2", "--data", str(root / "demos"), "--out", str(root / "run")
    )  # fmt: skip
    return root / "run"


def strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_a_moved_run_folder_loads_evaluates_and_holds_no_absolute_path(
    trained_run: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "machine_b" / "copied_run"
    shutil.copytree(trained_run, moved)
    origin = str(trained_run.parent)
    for name in ("run.json", "config.json"):
        recorded = strings(json.loads((moved / "checkpoint" / name).read_text()))
        leaked = [s for s in recorded if s.startswith("/") or origin in s]
        assert not leaked, f"{name} holds paths of the training machine: {leaked}"
    config = json.loads((moved / "checkpoint" / "config.json").read_text())
    assert config["data"] == os.path.join("..", "demos")  # relative to the run folder
    assert (moved / config["data"]).name == "demos"
    Agent.from_pretrained(moved / "checkpoint")
    result = run_cli(
        "eval", "--checkpoint", str(moved / "checkpoint"), "--env", CRAFTER, "--tasks", "collect_wood",
        "--episodes", "1", "--workers", "1", "--json",
    )  # fmt: skip
    assert json.loads(result.stdout)["episodes"] == 1


def test_a_local_path_is_recorded_relative_to_the_run_folder(tmp_path: Path) -> None:
    from train.checkpoint import portable_path

    (tmp_path / "data" / "demos").mkdir(parents=True)
    checkpoint = tmp_path / "runs" / "a" / "checkpoint"
    assert portable_path(str(tmp_path / "data" / "demos"), checkpoint) == "../../data/demos"
    assert portable_path("pretrained:crafter-all", checkpoint) == "pretrained:crafter-all"
    assert portable_path("alice/crafter", checkpoint) == "alice/crafter"  # a hub id, no local path
    assert portable_path(None, checkpoint) is None


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}


@pytest.mark.parametrize(
    ("umask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)]
)
def test_saved_checkpoints_take_the_umasks_permissions(
    tmp_path: Path, umask: int, file_mode: int, folder_mode: int
) -> None:
    from train.checkpoint import copy_checkpoint

    before = os.umask(umask)
    try:
        torch.manual_seed(0)
        saved = InstructionPolicy(make_tiny_config()).save_pretrained(tmp_path / "checkpoint")
        copied = tmp_path / "copy"
        copy_checkpoint(Path(saved), copied)
    finally:
        os.umask(before)
    for folder in (Path(saved), copied):
        found = modes(folder)
        assert found.pop(folder.name) == folder_mode, oct(stat.S_IMODE(folder.stat().st_mode))
        assert found == {"config.json": file_mode, "model.safetensors": file_mode}, {
            k: oct(v) for k, v in found.items()
        }


def test_a_training_run_under_umask_027_is_group_readable(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    demos = trained_run.parent / "demos"
    result = run_cli_with_umask(
        0o027, "bc", "--config", TINY, "--set", "train.steps=2", "--data", str(demos), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    checkpoint = modes(out / "checkpoint")
    assert checkpoint.pop("checkpoint") == 0o750
    assert set(checkpoint.values()) == {0o640}, {k: oct(v) for k, v in checkpoint.items()}


def run_cli_with_umask(umask: int, *args: str):
    import subprocess

    from helpers import SCRIPT

    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(umask)
    )


# -- a hub id ----------------------------------------------------------------------------------


def hub_cache(root: Path, checkpoint: Path, repo_id: str = "alice/crafter") -> Path:
    """The hub's cache layout: models--user--name/{refs/main, snapshots/<commit>/files}."""
    user, name = repo_id.split("/")
    repo = root / f"models--{user}--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in ("config.json", "model.safetensors"):
        shutil.copyfile(checkpoint / file, snapshot / file)
    return snapshot


@pytest.fixture
def offline_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, trained_run: Path) -> Path:
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    hub_cache(cache, trained_run / "checkpoint")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache


def test_a_hub_id_loads_from_the_cache_offline_and_a_local_path_wins(
    offline_cache: Path, trained_run: Path, tmp_path: Path
) -> None:
    folder = resolve_checkpoint("alice/crafter")
    assert Path(folder) == offline_cache / "models--alice--crafter" / "snapshots" / COMMIT
    agent = Agent.from_pretrained("alice/crafter")
    expected = InstructionPolicy.from_pretrained(trained_run / "checkpoint").state_dict()
    assert all(torch.equal(agent.policy.state_dict()[k], v) for k, v in expected.items())
    # an existing local path always means the path (here an empty folder: not a checkpoint)
    (tmp_path / "alice" / "crafter").mkdir(parents=True)
    assert resolve_checkpoint("alice/crafter") == "alice/crafter"
    with pytest.raises(CheckpointError, match=r"alice/crafter/model\.safetensors is missing"):
        Agent.from_pretrained("alice/crafter")


def test_a_hub_id_in_no_cache_names_both_readings(offline_cache: Path) -> None:
    message = r"'bob/nothing' is neither a local checkpoint folder \(there is no such path\) nor a Hugging Face Hub model in the local cache"
    with pytest.raises(CheckpointError, match=message):
        Agent.from_pretrained("bob/nothing")


def test_without_huggingface_hub_a_hub_id_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as when not installed
    with pytest.raises(CheckpointError, match=r"needs huggingface_hub: pip install huggingface_hub"):
        hub_snapshot("alice/crafter")


def test_eval_takes_a_hub_id(offline_cache: Path) -> None:
    env = {**os.environ}
    result = run_cli(
        "eval", "--checkpoint", "alice/crafter", "--env", CRAFTER, "--tasks", "collect_wood",
        "--episodes", "1", "--workers", "1", "--json", env=env,
    )  # fmt: skip
    assert json.loads(result.stdout)["episodes"] == 1


# -- export hub -------------------------------------------------------------------------------


def test_export_hub_writes_an_uploadable_folder_without_trainer_state_or_local_paths(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(
        json.dumps(
            {
                "episodes": 20, "success_rate": 0.35, "ci95": [0.18, 0.57], "env_id": CRAFTER,
                "mode": "correct | </table>\n# injected", "tasks": {"collect_wood": {"episodes": 20, "success_rate": 0.35}},
                "per_episode": [{"seed": 1}], "video": f"{trained_run.parent}/videos/ep0.mp4",
            }
        )
    )  # fmt: skip
    out = tmp_path / "upload"
    result = run_cli(
        "export", "hub", str(trained_run), "--out", str(out), "--eval", str(evaluation), "--json"
    )
    assert json.loads(result.stdout)["files"] == [
        "README.md",
        "card.json",
        "config.json",
        "model.safetensors",
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "card.json",
        "config.json",
        "model.safetensors",
    ]
    card = (out / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: instructcraft" in front and "tags:" in front
    assert "Behavioral cloning for 2 steps" in body
    assert "| success_rate | 0.350 |" in body and "| collect_wood | 0.350 | 20 |" in body
    assert 'Agent.from_pretrained("user/name")' in body
    assert "correct \\| &lt;/table&gt; # injected" in body  # one table cell, whatever the run file held
    origin = str(trained_run.parent)
    for file in ("README.md", "card.json", "config.json"):
        assert origin not in (out / file).read_text(), file
    assert "per_episode" not in json.loads((out / "card.json").read_text())["evaluation"]
    assert (out / "model.safetensors").read_bytes() == (
        trained_run / "checkpoint" / "model.safetensors"
    ).read_bytes()
    # the folder loads as a checkpoint, and as a hub id once in the hub's cache
    Agent.from_pretrained(out)
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    hub_cache(cache, out, "carol/exported")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    Agent.from_pretrained("carol/exported")


def test_export_hub_refuses_a_non_empty_out(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "upload"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("export", "hub", str(trained_run), "--out", str(out), check=False)
    assert result.returncode == 2, result.stderr
    assert f"--out {out} exists and is not an empty folder" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_eval_workers_load_the_folder_a_hub_id_resolved_to_in_the_parent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hub id is resolved once, in the parent: spawned workers (which could not reach the hub
    or its cache) are handed the local folder."""
    import agent.pretrained as pretrained
    from agent.evaluate import evaluate

    calls: list[str] = []

    def snapshot(repo_id: str) -> str:
        calls.append(repo_id)
        return str(pretrained.ROOT / "crafter-all")

    monkeypatch.setattr(pretrained, "hub_snapshot", snapshot)
    result = evaluate(
        "instructcraft/Crafter-Instruct-v0",
        2,
        checkpoint="someone/crafter-agent",
        tasks=["collect_wood"],
        workers=2,
        env_kwargs={"step_limit": 5},
    )
    assert result["episodes"] == 2
    assert set(calls) == {"someone/crafter-agent"}
