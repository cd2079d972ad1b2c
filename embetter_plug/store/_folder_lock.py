"""One writer per extraction folder: an exclusive lock held while a run writes the folder.

The lock is ``fcntl.flock`` on a file in the folder (:data:`LOCK`) that holds the writer's
process id. The kernel releases it when the process ends however it ends, so a lock left by a
killed run is stale by construction: the next run takes it over. The file itself stays (removing
it would let two runs lock two different files); only the lock on it counts. Where ``fcntl`` is
missing (Windows) the file is created exclusively (``O_EXCL``) and a file whose process is gone
is taken over.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["LOCK", "FolderInUseError", "check_not_in_use", "folder_lock"]

LOCK = ".embetter_plug.lock"


class FolderInUseError(RuntimeError):
    """Another run is writing the extraction folder."""


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid else "another process"


def _refuse(folder: Path, path: Path):
    raise FolderInUseError(
        f"{str(folder)!r} is being written by another extraction ({_holder(path)} holds "
        f"{path.name}); wait for it to end or stop it, then run again (overwrite=True does "
        "not take over a folder in use).")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder):
    """Hold the folder's lock while the block runs; :class:`FolderInUseError` when another
    run (in any process, this one included) holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    if fcntl is None:
        yield from _exclusive_file(folder, path)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        _refuse(folder, path)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock


def _exclusive_file(folder: Path, path: Path):
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                _refuse(folder, path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its process is gone
    else:
        _refuse(folder, path)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def check_not_in_use(folder) -> None:
    """Raise :class:`FolderInUseError` now when a run holds ``folder`` (a check before a model
    loads; the lock itself is taken when writing starts)."""
    folder = Path(folder)
    if folder.is_dir() and (folder / LOCK).exists():
        with folder_lock(folder):
            pass
