"""`make setup` on a machine without a GPU installs torch from PyTorch's CPU index (falling back
to the default index when that cannot be reached), and the default index's build with a GPU.
The Makefile's own recipe, printed by `make -n`, runs against a stand-in python that records
what it is asked: nothing is installed."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
  "-c import torch") exit {has_torch};;
  *download.pytorch.org*) exit {cpu_index_fails};;
esac
exit 0
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def torch_install_command(python: Path) -> str:
    """The set-up recipe's torch line (with its continuation lines), as make would run it."""
    printed = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", "setup", f"PY={python}", f"VENV={python.parent}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = printed.replace("\\\n", " ").splitlines()
    [command] = [c for c in commands if '-c "import torch"' in c]
    return command


def run_setup_line(
    tmp_path: Path, *, gpu: bool, has_torch: bool = False, cpu_index_fails: bool = False
) -> list[str]:
    """Run the torch line with a stand-in python (and nvidia-smi when ``gpu``); the calls it got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    python = bin_dir / "python"
    python.write_text(
        FAKE_PYTHON.format(log=log, has_torch=0 if has_torch else 1, cpu_index_fails=int(cpu_index_fails))
    )
    tools = [python]
    if gpu:
        tools.append(bin_dir / "nvidia-smi")
        tools[-1].write_text("#!/bin/sh\nexit 0\n")
    for tool in tools:
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    command = torch_install_command(python)
    # PATH holds only the stand-ins: a real nvidia-smi on this machine cannot change the answer.
    subprocess.run(["/bin/sh", "-c", command], env={"PATH": str(bin_dir)}, check=True, capture_output=True)
    return log.read_text().splitlines()


def test_without_a_gpu_torch_comes_from_the_cpu_index(tmp_path: Path) -> None:
    calls = run_setup_line(tmp_path, gpu=False)
    assert calls == [
        "-c import torch",
        f"-m pip install --quiet --retries 1 --timeout 30 {CPU_INDEX} torch==2.13.0",
    ]


def test_without_a_gpu_an_unreachable_cpu_index_falls_back_to_the_default_one(tmp_path: Path) -> None:
    calls = run_setup_line(tmp_path, gpu=False, cpu_index_fails=True)
    assert len(calls) == 3 and CPU_INDEX in calls[1]
    assert calls[2] == "-m pip install --quiet torch==2.13.0"


def test_with_a_gpu_torch_comes_from_the_default_index(tmp_path: Path) -> None:
    assert run_setup_line(tmp_path, gpu=True) == ["-c import torch", "-m pip install --quiet torch==2.13.0"]


@pytest.mark.parametrize("gpu", [False, True])
def test_a_venv_that_has_torch_keeps_it(tmp_path: Path, gpu: bool) -> None:
    assert run_setup_line(tmp_path, gpu=gpu, has_torch=True) == ["-c import torch"]
