"""Crafted datasets: absurd metadata, zip-bomb members, episodes the metadata does not describe,
wrong-type index fields and files that are not files. Each is refused with one line that names
the file and the problem, before anything large is allocated or inflated and before training."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import SCRIPT

from envs.data.store import Dataset, DatasetError, DatasetWriter, Episode

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture
def demos(crafter_demos: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(crafter_demos, tmp_path / "demos"))


def cli(
    *args: str, memory_limit: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The console script in a child process; ``memory_limit`` caps its address space (bytes),
    set in the child only."""

    def limit() -> None:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, timeout=timeout, preexec_fn=limit, check=False
    )


def bc(data: Path, out: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    sets = ["--set", "train.steps=2", "--set", "train.device=cpu"]
    return cli("bc", "--config", TINY, *sets, "--data", str(data), "--out", str(out), **kwargs)


def edit_json(path: Path, change: dict[str, Any]) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))


def entry_of(root: Path, episode: int) -> dict[str, Any]:
    return json.loads((root / "index.jsonl").read_text().splitlines()[episode])


def edit_entry(root: Path, episode: int, change: dict[str, Any]) -> None:
    lines = (root / "index.jsonl").read_text().splitlines()
    lines[episode] = json.dumps({**json.loads(lines[episode]), **change})
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")


def commit_bytes(root: Path, episode: int, data: bytes) -> Path:
    """Replace an episode's file and record its size and checksum, as a writer would have: the
    crafted file passes the checksum, so only a check of its content can catch it."""
    path = root / entry_of(root, episode)["file"]
    path.write_bytes(data)
    edit_entry(root, episode, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return path


def rewrite_members(root: Path, episode: int, **arrays: np.ndarray) -> Path:
    path = root / entry_of(root, episode)["file"]
    with np.load(path) as npz:
        members = {name: npz[name] for name in npz.files}
    members.update(arrays)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **members)
    return commit_bytes(root, episode, buffer.getvalue())


def claimed_member(archive: zipfile.ZipFile, name: str, shape: tuple[int, ...], written: int) -> None:
    """An npy member whose header says ``shape`` uint8 followed by ``written`` zero bytes (all of
    them for a zip bomb, a few for a header that lies); streamed, so the test never holds it."""
    with archive.open(f"{name}.npy", "w", force_zip64=True) as stream:
        header = {"descr": "|u1", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(stream, header)
        zeros = bytes(2**20)
        while written > 0:
            stream.write(zeros[: min(written, len(zeros))])
            written -= len(zeros)


def craft_images(root: Path, episode: int, shape: tuple[int, ...], written: int) -> Path:
    """Episode ``episode`` with its first image block replaced by a crafted member."""
    path = root / entry_of(root, episode)["file"]
    with np.load(path) as npz:
        members = {name: npz[name] for name in npz.files}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in members.items():
            if name == "images_0000":
                claimed_member(archive, name, shape, written)
            else:
                with archive.open(f"{name}.npy", "w") as stream:
                    np.lib.format.write_array(stream, array)
    return commit_bytes(root, episode, buffer.getvalue())


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- absurd metadata ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image_shape": [100_000, 100_000, 3]}, "image_shape"),
        ({"image_shape": [64, 64, 4]}, "image_shape"),
        ({"image_shape": ["64", 64, 3]}, "image_shape"),
        ({"image_shape": 64}, "image_shape"),
        ({"action_space": {"type": "Discrete", "n": 10**12}}, "action_space"),
        ({"action_space": {"type": "Discrete", "n": 0}}, "action_space"),
        ({"action_space": {"type": "MultiDiscrete", "nvec": [10**9, 10**9]}}, "action_space"),
        ({"action_space": {"type": "MultiDiscrete", "nvec": [2] * 100_000}}, "action_space"),
        ({"action_space": {"type": "Box"}}, "action_space"),
        ({"frames_per_block": 0}, "frames_per_block"),
        ({"frames_per_block": "32"}, "frames_per_block"),
        ({"env_id": 7}, "env_id"),
    ],
)
def test_absurd_metadata_is_refused_when_the_dataset_opens(
    demos: Path, change: dict[str, Any], field: str
) -> None:
    edit_json(demos / "metadata.json", change)
    with pytest.raises(DatasetError, match=rf"metadata\.json: {field} "):
        Dataset(demos)
    one_line_error(cli("data", "info", str(demos)), "metadata.json", field)


def test_metadata_that_is_a_json_list_is_refused(demos: Path) -> None:
    (demos / "metadata.json").write_text("[1, 2, 3]")
    one_line_error(cli("data", "check", str(demos)), "metadata.json", "a JSON object")


@pytest.mark.parametrize(
    "change",
    [{"image_shape": [65_536, 65_536, 3]}, {"action_space": {"type": "Discrete", "n": 10**12}}],
    ids=["image_shape", "action_count"],
)
def test_bc_on_absurd_metadata_fails_fast_under_a_memory_limit(
    demos: Path, tmp_path: Path, change: dict[str, Any]
) -> None:
    edit_json(demos / "metadata.json", change)
    began = time.monotonic()
    result = bc(demos, tmp_path / "out", memory_limit=2 * 2**30)
    assert time.monotonic() - began < 60
    one_line_error(result, "metadata.json", next(iter(change)))
    assert not (tmp_path / "out" / "checkpoint").exists()


# -- zip bombs --------------------------------------------------------------------------------------

BOMB_FRAMES = 13_000  # 13_000 frames of 64x64x3: 160 MB inflated, about 160 kB on disk


def test_a_zip_bomb_member_is_refused_without_inflating_it(demos: Path) -> None:
    shape = (BOMB_FRAMES, 64, 64, 3)
    path = craft_images(demos, 1, shape, math.prod(shape))
    assert path.stat().st_size < 2**20
    result = cli("data", "check", str(demos))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    problem = next(line for line in result.stdout.splitlines() if "(episode 1)" in line)
    assert "000001.npz" in problem and "images_0000" in problem and str(BOMB_FRAMES) in problem
    # Reading the episode, or checking the dataset, allocates a small part of what the bomb
    # holds: the address space is capped at what the process had plus 64 MiB.
    child = """if True:
        import resource, sys
        from envs.data.store import Dataset, DatasetError, DatasetWriter, Episode
        dataset = Dataset(sys.argv[1])
        dataset.images(0, 0, 4)  # a good episode first: everything reading needs is loaded
        size = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize"))
        cap = size * 1024 + 64 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        problems = dataset.check()
        assert len(problems) == 1 and problems[0].episode == 1, problems
        assert "(episode 1)" in problems[0].message, problems
        try:
            dataset.images(1, 0, 4)
        except DatasetError as error:
            print(error)
        """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", child, str(demos)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "images_0000" in result.stdout and "000001.npz (episode 1)" in result.stdout


def test_a_slice_does_not_keep_its_whole_block_alive(demos: Path) -> None:
    dataset = Dataset(demos)
    chunk = dataset.chunk(0, 3, 5)
    for name, array in chunk.items():
        root = array
        while isinstance(root.base, np.ndarray):
            root = root.base
        assert root.nbytes == array.nbytes, f"{name} keeps {root.nbytes} bytes alive for {array.nbytes}"


# -- episodes the metadata does not describe -----------------------------------------------------


def episode_members(demos: Path) -> dict[str, np.ndarray]:
    with np.load(demos / entry_of(demos, 1)["file"]) as npz:
        return {name: npz[name] for name in npz.files}


def wrong(demos: Path, kind: str) -> dict[str, np.ndarray]:
    members = episode_members(demos)
    actions, rewards = members["actions"].copy(), members["rewards"].copy()
    if kind == "action_out_of_range":
        actions[3] = 99
        return {"actions": actions}
    if kind == "action_shape":
        return {"actions": np.stack([actions, actions], axis=1)}
    if kind == "action_dtype":
        return {"actions": actions.astype(np.float64)}
    if kind == "image_size":
        return {name: array[:, :32, :32] for name, array in members.items() if name.startswith("images_")}
    rewards[2] = np.nan
    return {"rewards": rewards}


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("action_out_of_range", "99"),
        ("action_shape", "actions"),
        ("action_dtype", "actions"),
        ("image_size", "images_0000"),
        ("nan_reward", "rewards"),
    ],
)
def test_data_check_refuses_episodes_the_metadata_does_not_describe(
    demos: Path, kind: str, needle: str
) -> None:
    rewrite_members(demos, 1, **wrong(demos, kind))
    problems = Dataset(demos).check()
    message = problems[0].message
    assert len(problems) == 1 and "000001.npz (episode 1)" in message and needle in message, problems
    result = cli("data", "check", str(demos))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stdout


def test_bc_refuses_an_out_of_range_action_before_step_one(demos: Path, tmp_path: Path) -> None:
    rewrite_members(demos, 1, **wrong(demos, "action_out_of_range"))
    result = bc(demos, tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "found before training" in result.stderr and "000001.npz (episode 1)" in result.stderr
    assert "99" in result.stderr
    assert not (tmp_path / "out" / "checkpoint").exists()


# -- one line, never a traceback or a hang --------------------------------------------------------


def break_dataset(root: Path, kind: str) -> tuple[str, str]:
    """Damage ``root`` one way; returns (file, problem) the error must name."""
    if kind == "length_not_a_number":
        edit_entry(root, 1, {"length": "abc"})
        return "index.jsonl line 2", "length"
    if kind == "metadata_list":
        (root / "metadata.json").write_text("[]")
        return "metadata.json", "a JSON object"
    if kind == "frames_per_block_0":
        edit_json(root / "metadata.json", {"frames_per_block": 0})
        return "metadata.json", "frames_per_block"
    episode = root / entry_of(root, 1)["file"]
    if kind == "header_claims_10_million_frames":
        craft_images(root, 1, (10**7, 64, 64, 3), 1000)
        return "000001.npz (episode 1)", "images_0000"
    episode.unlink()
    if kind == "directory":
        episode.mkdir()
        return "000001.npz (episode 1)", "a directory"
    os.mkfifo(episode)
    return "000001.npz (episode 1)", "not a regular file"


KINDS = [
    "length_not_a_number",
    "metadata_list",
    "frames_per_block_0",
    "header_claims_10_million_frames",
    "directory",
    "fifo",
]
DATASET_LEVEL = {"length_not_a_number", "metadata_list", "frames_per_block_0"}


@pytest.mark.parametrize("kind", KINDS)
def test_data_commands_name_the_file_and_the_problem(demos: Path, kind: str) -> None:
    file, problem = break_dataset(demos, kind)
    check = cli("data", "check", str(demos), timeout=60)
    info = cli("data", "info", str(demos), timeout=60)
    if kind in DATASET_LEVEL:
        one_line_error(check, file, problem)
        one_line_error(info, file, problem)
        return
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr
    assert any(file in line and problem in line for line in check.stdout.splitlines()), check.stdout
    assert "Traceback" not in info.stderr and info.returncode in (0, 1), info.stderr
    if kind in ("directory", "fifo"):  # the quick look sees these without reading the file
        assert "1 episode(s) with corrupt files (counted above): 1" in info.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_bc_names_the_file_and_the_problem(demos: Path, tmp_path: Path, kind: str) -> None:
    file, problem = break_dataset(demos, kind)
    result = bc(demos, tmp_path / "out", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert any(file in line and problem in line for line in result.stderr.splitlines()), result.stderr
    assert not (tmp_path / "out" / "checkpoint").exists()


@pytest.mark.parametrize(
    "layout",
    [
        {"image_shape": (64, 64, 4), "action_space": {"type": "Discrete", "n": 7}},
        {"image_shape": (64, 64, 3), "action_space": {"type": "Discrete", "n": 10**9}},
    ],
)
def test_the_writer_never_writes_metadata_readers_refuse(tmp_path: Path, layout: dict[str, Any]) -> None:
    with pytest.raises(DatasetError, match=r"metadata\.json: (image_shape|action_space) is"):
        DatasetWriter(tmp_path / "new", env_id="test-env", **layout)
    assert not (tmp_path / "new").exists()


def test_data_check_refuses_a_multidiscrete_component_out_of_range(tmp_path: Path) -> None:
    steps = 5
    actions = np.zeros((steps, 2), np.int64)
    actions[4, 1] = 3  # component 1 has 3 values: 0, 1, 2
    episode = Episode(
        images=np.zeros((steps + 1, 8, 8, 3), np.uint8),
        actions=actions,
        rewards=np.zeros(steps, np.float32),
        terminated=np.zeros(steps, bool),
        truncated=np.zeros(steps, bool),
        instruction="chop a tree",
        task="chop",
        env_id="test-env",
    )
    space = {"type": "MultiDiscrete", "nvec": [2, 3]}
    with DatasetWriter(
        tmp_path / "d", env_id="test-env", image_shape=(8, 8, 3), action_space=space
    ) as writer:
        writer.add(episode)
    (problem,) = Dataset(tmp_path / "d").check()
    assert problem.episode == 0
    assert "000000.npz (episode 0): action [0, 3] at step 4 is outside" in problem.message
    assert "MultiDiscrete([2, 3])" in problem.message
