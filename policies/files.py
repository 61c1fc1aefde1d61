"""Files on disk, as the policy's checkpoints need them: atomic directory writes (a reader sees
the old directory or the complete new one), what a failed write says, and which paths are safe
to read.

The crash and disk-full rules here are the dataset store's (``envs.data.format``:
``atomic_write_bytes``, ``disk_full_error``), written twice because envs and policies are the
two leaves of the project and neither may import the other; agent and train use one of the two
(a file: ``atomic_write_bytes``; a checkpoint folder, and what a failed write says: this module).
The rules, the same in both: what is written is fsynced, renamed over the old in one step, and
its folder fsynced after the rename; a write failed for a full disk when its error's errno says
so (ENOSPC, EDQUOT). Change one copy, change both.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def process_umask() -> int:
    """The process's umask, read now (a program may change it while running). Linux reports it in
    /proc/self/status; elsewhere it is read by setting it and putting it back, under a lock so two
    of our threads never see the briefly zeroed one."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would have (0o666 or 0o777 less
    the umask). ``mkdtemp`` makes folders 0700 and some writers (safetensors) files 0600, by design
    for temporary files; a checkpoint is no secret, and a shared folder must stay readable to the
    people the umask lets read it."""
    mode = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, mode & ~process_umask())


def _apply_umask_tree(directory: Path) -> None:
    apply_umask(directory)
    for path in directory.rglob("*"):
        if not path.is_symlink():
            apply_umask(path)


def _fsync_folder(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_folder(directory)


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a staging directory; on success it replaces ``directory`` in one rename.

    If the body raises, ``directory`` is left as it was (the last good checkpoint survives).
    The folder and what the body wrote in it take the umask's permissions (``apply_umask``).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield staging
        _apply_umask_tree(staging)
        _fsync_tree(staging)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(staging, directory)
        _fsync_folder(directory.parent)  # the rename itself survives a crash
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# torch.save reports a failed write without an errno ("[enforce fail at inline_container.cc] ...
# file write failed"): for such an error only, below this much free space the cause is taken to
# be a full disk. An error with an errno is judged by it alone, as the dataset store judges it.
_NEARLY_FULL_BYTES = 64 * 2**20


def mount_point(path: str | os.PathLike[str]) -> Path:
    """The mount point (the device, to a user) holding ``path``: from the nearest existing folder
    up, since a folder not made yet says nothing. Same as ``envs.data.format._mount_point``."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def is_disk_full(error: BaseException, path: str | os.PathLike[str]) -> bool:
    """Whether writing ``path`` failed for a full disk (or quota): by the errno when the error
    has one (a permission error on a nearly full disk is a permission error), else by its words
    or, failing those, by the disk's free space."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if "no space left" in str(error).lower():
        return True
    try:
        return shutil.disk_usage(mount_point(path)).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def describe_write_failure(error: BaseException, file: str | os.PathLike[str], intact: str) -> str:
    """One line for a failed write of ``file``: when the disk is full, "no space left on device
    while writing FILE; ``intact``. Free some space on MOUNT ...", the words of the dataset
    store's ``envs.data.format.disk_full_error`` (the two copies cannot share code; change
    both); else the file and the error."""
    if is_disk_full(error, file):
        return (
            f"no space left on device while writing {file}; {intact}. "
            f"Free some space on {mount_point(file)} (or write to another disk) and try again"
        )
    return f"could not write {file} ({type(error).__name__}: {error}); {intact}"


_KINDS = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def irregular_kind(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists but is no regular file ("a named pipe", "a directory",
    ...), else None. Reading a named pipe blocks until a writer comes and a device may never
    end, so a file of a checkpoint is checked before it is opened. Links are followed: a link
    to a regular file is one (model folders link their weights into a shared cache)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: the read that follows says so
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def describe_irregular(path: str | os.PathLike[str]) -> str | None:
    """One phrase for a checkpoint file that is no regular file, or None when it is one (or absent)."""
    kind = irregular_kind(path)
    if kind is None:
        return None
    return f"{path} is {kind}, not a regular file: a checkpoint's files are plain files; replace it with the file training wrote"
