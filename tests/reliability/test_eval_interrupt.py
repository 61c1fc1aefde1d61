"""Ctrl-C during `instructcraft eval`: the rates over the episodes that finished, one line saying
how many, exit code 130, no traceback, and no worker left behind. And `--workers` beyond the
episodes or the CPU cores is capped, saying so."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import SCRIPT, run_cli
from worker_pool_jobs import alive, children, command_line

import envs
from agent.evaluate import EvaluationInterrupted, evaluate, evaluate_phrasings, sensitivity
from envs.workers import usable_cores


def interrupt_at(row_number: int) -> Any:
    """A progress callback that acts as a Ctrl-C arriving once ``row_number`` episodes finished."""
    rows: list[dict[str, Any]] = []

    def progress(row: dict[str, Any]) -> None:
        rows.append(row)
        if len(rows) == row_number:
            raise KeyboardInterrupt

    return progress


def test_interrupted_evaluate_keeps_the_finished_episodes(crafter_checkpoint: Path) -> None:
    with pytest.raises(EvaluationInterrupted, match="interrupted after 3 of 5 episodes") as caught:
        evaluate(
            envs.CRAFTER_ID,
            5,
            checkpoint=str(crafter_checkpoint),
            tasks=["collect_wood"],
            workers=1,
            progress=interrupt_at(3),
        )
    stopped = caught.value
    assert stopped.exit_code == 130 and (stopped.finished, stopped.planned) == (3, 5)
    [partial] = stopped.results
    assert partial["episodes"] == 3 and partial["tasks"]["collect_wood"]["episodes"] == 3
    assert [row["seed"] for row in stopped.rows] == [100_000, 100_001, 100_002]
    # The same rates as a run of those three episodes alone.
    whole = evaluate(envs.CRAFTER_ID, 3, checkpoint=str(crafter_checkpoint), tasks=["collect_wood"])
    assert partial["success_rate"] == whole["success_rate"] and partial["mean_length"] == whole["mean_length"]


def test_interrupted_sensitivity_keeps_the_finished_modes(crafter_checkpoint: Path) -> None:
    with pytest.raises(EvaluationInterrupted, match="interrupted after 3 of 6 episodes") as caught:
        sensitivity(
            envs.CRAFTER_ID,
            2,
            checkpoint=str(crafter_checkpoint),
            tasks=["collect_wood"],
            progress=interrupt_at(3),
        )
    assert [(run["mode"], run["episodes"]) for run in caught.value.results] == [
        ("correct", 2),
        ("swapped", 1),
    ]


def test_interrupted_phrasings_keep_the_tasks_that_ran_every_phrasing(crafter_checkpoint: Path) -> None:
    phrasings = {"collect_wood": ["chop a tree"], "eat_cow": ["eat a cow"]}
    # Jobs run task by task, seed by seed: trained phrasing, then the new one.
    with pytest.raises(EvaluationInterrupted, match="interrupted after 5 of 8 episodes") as caught:
        evaluate_phrasings(
            envs.CRAFTER_ID, phrasings, 2, checkpoint=str(crafter_checkpoint), progress=interrupt_at(5)
        )
    [partial] = caught.value.results
    assert list(partial["tasks"]) == ["collect_wood"] and partial["episodes_per_task"] == 2
    assert len(partial["episodes"]) == 5


def spawned_workers() -> dict[int, str]:
    return {pid: start for pid, start in children(os.getpid()).items() if "spawn_main" in command_line(pid)}


@pytest.mark.slow
def test_interrupted_evaluate_stops_its_workers(crafter_checkpoint: Path) -> None:
    before = spawned_workers()
    with pytest.raises(EvaluationInterrupted, match="interrupted after 1 of 40 episodes"):
        evaluate(
            envs.CRAFTER_ID,
            40,
            checkpoint=str(crafter_checkpoint),
            tasks=["collect_wood"],
            workers=2,
            progress=interrupt_at(1),
        )
    left = {pid for pid, start in spawned_workers().items() if pid not in before and alive(pid, start)}
    assert not left


def eval_until(args: list[str], finished: re.Pattern[str]) -> tuple[int, str, str]:
    """``instructcraft eval`` in its own process group, sent SIGINT (as a terminal's Ctrl-C is, to
    the whole group) once stderr matches ``finished``; (exit code, stdout, stderr) once it ends."""
    process = subprocess.Popen(
        [SCRIPT, "eval", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    chunks: list[bytes] = []
    seen = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        while chunk := os.read(process.stderr.fileno(), 4096):
            chunks.append(chunk)
            if finished.search(b"".join(chunks).decode(errors="replace")):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    spawned: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 240
        while not seen.is_set() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen.is_set(), b"".join(chunks).decode(errors="replace")
        spawned = children(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        assert process.stdout is not None
        stdout = process.stdout.read()  # stderr is the reader's
        process.wait(timeout=60)
        reader.join(timeout=30)
        time.sleep(1)
        left = {pid: command_line(pid) for pid, start in spawned.items() if alive(pid, start)}
        assert not left, f"left running after eval stopped: {left}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid, start in spawned.items():
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)
    return process.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "as_json"), [("2", False), ("1", True)])
def test_ctrl_c_in_eval_prints_what_finished_and_exits_130(
    workers: str, as_json: bool, crafter_checkpoint: Path
) -> None:
    args = ["--checkpoint", str(crafter_checkpoint), "--env", envs.CRAFTER_ID, "--episodes", "200"]
    args += ["--tasks", "collect_wood", "--workers", workers, *(["--json"] if as_json else [])]
    code, stdout, stderr = eval_until(args, re.compile(r"\b([2-9]|\d\d+)/200\b"))
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    stopped = re.search(
        r"error: interrupted after (\d+) of 200 episodes; the rates above are over those \1", stderr
    )
    assert stopped, stderr[-3000:]
    finished = int(stopped.group(1))
    assert 2 <= finished < 200
    if as_json:
        report = json.loads(stdout)
        assert report["interrupted"] is True and (report["finished"], report["planned"]) == (finished, 200)
        assert report["runs"][0]["episodes"] == finished
    else:
        assert f"episodes={finished}" in stdout
        assert re.search(rf"^all\s+{finished}\s+\d\.\d{{3}}", stdout, re.MULTILINE), stdout


@pytest.mark.slow
def test_eval_caps_workers_to_the_episodes_and_cores(crafter_checkpoint: Path) -> None:
    args = ["eval", "--checkpoint", str(crafter_checkpoint), "--env", envs.CRAFTER_ID, "--episodes", "3"]
    result = run_cli(*args, "--tasks", "collect_wood", "--workers", "64")
    cores = usable_cores()
    assert f"--workers 64 capped to {min(3, cores)} ({cores} CPU cores, 3 eval episodes)" in result.stderr
    assert "episodes=3" in result.stdout
