"""The Ray rollout backend (envs/ray_rollouts.py) on a local Ray (``ray.init(num_cpus=2)``):
collection, evaluation and DAgger's rollouts give what the process pool gives (the same dataset
bytes, the same evaluation numbers, the same labelled episodes), a worker killed mid-episode is
retried once and then stops the run naming the episode, and without Ray ``--ray`` says how to
install it."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_config

from agent.evaluate import evaluate
from envs.data.collect import collect
from envs.ray_rollouts import RayClusterError, active, ray_rollouts
from envs.workers import WorkerError, map_jobs
from policies import InstructionPolicy
from train.dagger_rollout import RolloutJob, rollout_round
from train.dagger_settings import FLAGS

ray = pytest.importorskip("ray")

CRAFTER = "instructcraft/Crafter-Instruct-v0"
SUPPORT = str(Path(__file__).parents[1] / "support")
TASKS = ["collect_wood", "place_table"]


@pytest.fixture(scope="module")
def local_ray() -> object:
    """One local Ray for the module (starting one takes seconds); the test helpers importable in its workers."""
    # Tests on this machine: no token authentication, so that two test processes starting a local
    # Ray at once never race to write the same ~/.ray/auth_token.
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        address="local",  # never the two-node test's cluster, which may be running beside it
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": SUPPORT, "OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()
    if previous is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = previous


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    config = make_tiny_config().replace(**{"vision.image_size": [64, 64], "vision.channels": [8, 16]})
    torch.manual_seed(0)
    return str(InstructionPolicy(config).save_pretrained(tmp_path_factory.mktemp("ckpt") / "checkpoint"))


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_collect_through_ray_writes_the_pools_dataset_byte_for_byte(
    local_ray: object, tmp_path: Path
) -> None:
    """The backend does not change a dataset: same seeds, same episode files, index and metadata."""
    settings = {"tasks": TASKS, "seed": 3, "workers": 2}
    pool = collect(str(tmp_path / "pool"), CRAFTER, "crafter_planner", 6, **settings)
    with ray_rollouts() as session:
        assert active() is session and session.cpus == 0  # nothing started before the first map
        on_ray = collect(str(tmp_path / "ray"), CRAFTER, "crafter_planner", 6, **settings)
        assert session.cpus == 2  # the episodes went to Ray
    assert active() is None
    assert local_ray.is_initialized()  # a Ray this process started itself is left running
    assert on_ray["kept"] == pool["kept"] == 6
    written = files(tmp_path / "pool")
    assert any(name.endswith(".npz") for name in written)
    assert files(tmp_path / "ray") == written


def test_eval_through_ray_gives_the_pools_numbers(local_ray: object, checkpoint: str) -> None:
    """Same seeds, same sampled actions: every episode's success, return and length match."""
    shared = {"checkpoint": checkpoint, "tasks": TASKS, "seed": 11, "env_kwargs": {"step_limit": 30}}
    pool = evaluate(CRAFTER, 4, workers=2, **shared)
    with ray_rollouts() as session:
        on_ray = evaluate(CRAFTER, 4, workers=1, **shared)  # --workers is the pool's setting only
    assert session.cpus == 2  # the episodes went to Ray, not to this process
    assert on_ray["per_episode"] == pool["per_episode"]
    assert on_ray["success_rate"] == pool["success_rate"]
    assert on_ray["mean_length"] == pool["mean_length"]


def test_dagger_rollouts_through_ray_label_the_same_episodes(local_ray: object, checkpoint: str) -> None:
    jobs = [RolloutJob(20 + i, TASKS[i % 2], 1, 0.5) for i in range(4)]
    pool = [
        e for game in rollout_round(checkpoint, CRAFTER, "crafter_planner", jobs, workers=2) for e in game
    ]
    with ray_rollouts() as session:
        on_ray = [
            e for game in rollout_round(checkpoint, CRAFTER, "crafter_planner", jobs, workers=2) for e in game
        ]
    assert session.cpus == 2
    assert [e.seed for e in on_ray] == [20, 21, 22, 23]
    for ours, theirs in zip(on_ray, pool, strict=True):
        assert np.array_equal(ours.actions, theirs.actions) and np.array_equal(ours.images, theirs.images)
        assert ours.extra == theirs.extra


def test_a_worker_killed_mid_episode_is_retried_once(local_ray: object, tmp_path: Path) -> None:
    from ray_jobs import Attempt, crafter_env, steps_then_maybe_die

    jobs = [Attempt(0, 0), Attempt(1, 1), Attempt(2, 0)]  # seed 1's first attempt is killed
    with ray_rollouts():
        results = list(map_jobs(steps_then_maybe_die, jobs, setup=crafter_env, setup_args=(str(tmp_path),)))
    assert results == [5, 15, 25]
    assert len((tmp_path / "seed_1.attempts").read_text().splitlines()) == 2


def test_a_worker_killed_twice_stops_the_run_naming_the_episode(local_ray: object, tmp_path: Path) -> None:
    """The retry is the only one: what finished before is handed over, then one clear error."""
    from ray_jobs import Attempt, crafter_env, steps_then_maybe_die

    jobs = [
        Attempt(0, 0),
        Attempt(1, 0),
        Attempt(2, 99),
        Attempt(3, 0),
        Attempt(4, 0),
    ]  # seed 2 is killed on every attempt
    finished: list[int] = []
    with ray_rollouts(), pytest.raises(WorkerError) as raised:
        for result in map_jobs(steps_then_maybe_die, jobs, setup=crafter_env, setup_args=(str(tmp_path),)):
            finished.append(result)
    assert finished == [5, 15]
    message = str(raised.value)
    assert "the episode with seed 2" in message and "retried once" in message
    assert len((tmp_path / "seed_2.attempts").read_text().splitlines()) == 2  # first try + one retry


def test_an_error_raised_by_the_work_is_raised_as_itself(local_ray: object, tmp_path: Path) -> None:
    """An exception in an episode is not a dead worker: it keeps its type, names the episode
    and is not retried."""
    from ray_jobs import Attempt, divide_by_seed

    jobs = [Attempt(1, 0), Attempt(0, 0), Attempt(2, 0)]
    with ray_rollouts(), pytest.raises(ZeroDivisionError) as raised:
        list(map_jobs(divide_by_seed, jobs, setup=Path, setup_args=(str(tmp_path),)))
    assert "the episode with seed 0" in "".join(getattr(raised.value, "__notes__", []))
    assert len((tmp_path / "seed_0.attempts").read_text().splitlines()) == 1


def test_a_cluster_address_nothing_listens_on_is_refused_naming_it() -> None:
    """Checked when the block opens, in seconds, before any episode."""
    refused = r"no Ray cluster answers at 127\.0\.0\.1:9 .*ray start --head"
    with pytest.raises(RayClusterError, match=refused), ray_rollouts("127.0.0.1:9"):
        pass
    with pytest.raises(RayClusterError, match="is not HOST:PORT"), ray_rollouts("head-node"):
        pass


@pytest.mark.slow
def test_collect_on_a_two_node_cluster_equals_the_pool(tmp_path: Path) -> None:
    """`ray start --head` and a second `ray start --address` on this machine make a two-node
    cluster; `collect --ray-address` spreads the episodes over both nodes and writes the pool's
    dataset. Only the processes of this cluster are stopped afterwards, found by a marker in their
    environment (`ray stop` would stop every Ray on the machine; some Ray processes rename
    themselves, so their command line cannot tell)."""
    from helpers import run_cli

    ray_cli = str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a length limit
    common = ["--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    marker = f"INSTRUCTCRAFT_TEST_CLUSTER={temp}"
    env = {**os.environ, "PYTHONPATH": SUPPORT, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env["INSTRUCTCRAFT_TEST_CLUSTER"] = temp  # every process of the cluster inherits it
    # Ray's token authentication, with a token of this cluster's own (every node and the driver
    # must hold the same one; a user's nodes share ~/.ray/auth_token instead).
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    try:
        address = start_two_nodes(ray_cli, temp, common, env, marker)
        settings = ["--env", CRAFTER, "--episodes", "6", "--seed", "40", "--tasks", *TASKS]
        on_cluster = run_cli(
            "collect", *settings, "--out", str(tmp_path / "ray"), "--ray-address", address, env=env
        )
        assert f"the Ray cluster at {address} (2 CPUs)" in on_cluster.stderr
        run_cli("collect", *settings, "--out", str(tmp_path / "pool"), "--workers", "2")
        assert files(tmp_path / "ray") == files(tmp_path / "pool")
    finally:
        stop_processes_with(marker)
        shutil.rmtree(temp, ignore_errors=True)


def start_two_nodes(ray_cli: str, temp: str, common: list[str], env: dict[str, str], marker: str) -> str:
    """A head and a second node; the head's address. A port taken by another process between
    choosing it and Ray binding it (other tests start Rays beside this one) is tried once more."""
    for _ in range(2):
        address = f"127.0.0.1:{free_port()}"
        head = ["start", "--head", f"--port={address.rpartition(':')[2]}", f"--temp-dir={temp}"]
        started = None
        for args in ([*head, "--include-dashboard=false"], ["start", f"--address={address}"]):
            started = subprocess.run(
                [ray_cli, *args, *common], capture_output=True, text=True, env=env, timeout=120
            )
            if started.returncode != 0:
                break
        assert started is not None
        if started.returncode == 0:
            wait_for_cpus(ray_cli, address, env, "2.0")
            return address
        stop_processes_with(marker)
    raise AssertionError(f"could not start a two-node Ray cluster:\n{started.stderr[-3000:]}")


def wait_for_cpus(ray_cli: str, address: str, env: dict[str, str], cpus: str) -> None:
    """Until the cluster counts ``cpus`` CPUs: `ray start --address` returns before its node has
    joined, and a driver connecting then would see the head's CPU alone."""
    deadline = time.monotonic() + 90
    status = ""
    while time.monotonic() < deadline:
        status = subprocess.run(
            [ray_cli, "status", f"--address={address}"], capture_output=True, text=True, env=env, timeout=60
        ).stdout
        if f"/{cpus} CPU" in status:
            return
        time.sleep(1)
    raise AssertionError(f"the second node never joined the cluster at {address}:\n{status[-2000:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_processes_with(marker: str) -> None:
    """SIGKILL every other process whose environment holds ``marker`` (``NAME=value``)."""
    wanted = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environment:
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_to_collect_on_ray_keeps_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C with --ray behaves as with the pool: exit 130, no traceback, the episodes written
    so far kept and named, the dataset valid; the local Ray it started is shut down."""
    from helpers import assert_interrupted_collect_kept

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no ~/.ray/auth_token written by a test
    assert_interrupted_collect_kept(["collect", "--env", CRAFTER, "--ray"], tmp_path / "demos", 200)


def test_a_dagger_run_on_ray_advises_a_resume_on_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The resume command a stopped DAgger run prints keeps its episodes where they ran."""
    import envs.ray_rollouts as backend
    from train.dagger_settings import resume_command

    state = {"data": "demos", "env_id": CRAFTER, "dagger": {name: 1 for name in FLAGS}}
    assert "--ray" not in resume_command(tmp_path, state)
    with ray_rollouts():  # nothing starts before the first episodes
        assert resume_command(tmp_path, state).endswith("--ray --resume")
    monkeypatch.setattr(backend, "_check_reachable", lambda address: None)
    with ray_rollouts("10.0.0.7:6379"):
        assert resume_command(tmp_path, state).endswith("--ray-address 10.0.0.7:6379 --resume")
