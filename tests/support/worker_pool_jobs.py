"""Jobs and process lookups for the worker pool tests: module-level functions, so that spawned
workers can unpickle them, and a process's children read from /proc (Linux)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def announce(directory: str) -> int:
    """A worker's setup: leaves a file named after its pid in ``directory``; the state is the pid."""
    Path(directory, str(os.getpid())).touch()
    return os.getpid()


def sleep_then_pid(pid: int, seconds: float) -> int:
    time.sleep(seconds)
    return pid


def megabyte(_state: object, _job: object) -> bytes:
    return bytes(2**20)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> dict[int, str]:
    """The live children of ``pid``: child pid -> its start time (to tell a reused pid)."""
    found = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = fields[19]
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int, started: str) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (a zombie has ended)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == started
