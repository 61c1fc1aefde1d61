"""The worker pool (envs.workers) as a user meets it through collect, eval and dagger: workers
never outlive their parent, never outnumber the jobs or the CPU cores, and results never pile up
in memory however many jobs a run has."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import worker_pool_jobs
from worker_pool_jobs import alive, children, command_line

import envs.workers
from envs.workers import map_jobs

SUPPORT = str(Path(worker_pool_jobs.__file__).parent)
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


def python(script: str, *args: str) -> subprocess.Popen[str]:
    """``script`` in a fresh interpreter that imports the test jobs (the workers get its path)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([SUPPORT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


SLOW_MAP = """
    import sys
    import envs.workers
    from envs.workers import map_jobs
    from worker_pool_jobs import announce, sleep_then_pid

    envs.workers.usable_cores = lambda: 2  # two workers on any machine
    jobs = [120.0] * 8
    for _ in map_jobs(sleep_then_pid, jobs, setup=announce, setup_args=(sys.argv[1],), workers=2, what="test"):
        pass
"""


def test_workers_and_the_resource_tracker_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    parent = python(SLOW_MAP, str(tmp_path))
    spawned: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.iterdir())) < 2 and parent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(list(tmp_path.iterdir())) == 2, parent.communicate(timeout=10)
        spawned = children(parent.pid)
        workers = {int(path.name) for path in tmp_path.iterdir()}
        assert workers <= set(spawned)
        assert any("resource_tracker" in command_line(pid) for pid in spawned), spawned

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(alive(pid, started) for pid, started in spawned.items()) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {pid: command_line(pid) for pid, started in spawned.items() if alive(pid, started)}
        assert not left, f"still running 15 s after their parent was killed: {left}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()  # type: ignore[union-attr]
        parent.stderr.close()  # type: ignore[union-attr]
        for pid, started in spawned.items():
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)


def test_workers_are_capped_to_the_cpu_cores_and_say_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(envs.workers, "usable_cores", lambda: 2)
    # Each job takes long enough that a third worker, had it started, would have run one.
    results = list(
        map_jobs(worker_pool_jobs.sleep_then_pid, [0.5] * 6, setup=os.getpid, workers=64, what="eval")
    )
    assert len(results) == 6 and len(set(results)) <= 2 and os.getpid() not in results
    assert capsys.readouterr().err == "--workers 64 capped to 2 (2 CPU cores, 6 eval episodes)\n"


def test_workers_are_capped_to_the_jobs_and_one_job_runs_here(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(envs.workers, "usable_cores", lambda: 16)
    results = list(
        map_jobs(worker_pool_jobs.sleep_then_pid, [0.0], setup=os.getpid, workers=4, what="collect")
    )
    assert results == [os.getpid()]  # one job: no worker process at all
    assert capsys.readouterr().err == "--workers 4 capped to 1 (16 CPU cores, 1 collect episode)\n"


def test_jobs_are_read_lazily_and_at_most_a_window_ahead_of_the_results() -> None:
    pulled = 0

    def jobs() -> Iterator[float]:  # a generator: its length is unknown
        nonlocal pulled
        for _ in range(40):
            pulled += 1
            yield 0.0

    received = 0
    for _ in map_jobs(worker_pool_jobs.sleep_then_pid, jobs(), setup=os.getpid, workers=2, what="test"):
        received += 1
        assert pulled - received <= 4, f"{pulled} jobs taken for {received} results"
    assert received == pulled == 40


MEGABYTE_MAP = """
    import json, resource
    import envs.workers
    from envs.workers import map_jobs
    from worker_pool_jobs import megabyte

    envs.workers.usable_cores = lambda: 2
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = sum(len(result) for result in map_jobs(megabyte, range(400), setup=int, workers=2, what="test"))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"bytes": count, "grown_mb": (after - before) / 1024}))
"""


@pytest.mark.slow
def test_peak_memory_stays_flat_in_the_number_of_results() -> None:
    process = python(MEGABYTE_MAP)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    measured = json.loads(out)
    assert measured["bytes"] == 400 * 2**20
    # 400 results of 1 MB each pass through; only the few in flight may be held at once.
    assert measured["grown_mb"] < 64, measured
