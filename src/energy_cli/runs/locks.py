"""Locks: one on each run folder while a command runs in it, and one around every update of a file that
several runs share.

Run-folder lock (`acquire` / `release`, `run_lock`, `is_locked`): an exclusive `flock` on the folder
itself. The command line takes it before Hydra writes anything into the folder and holds it until the
command ends, so two processes never write into one folder: the second stops at once with one line. The
kernel drops the lock when its process ends in any way (SIGKILL included), so a stale lock cannot exist.
Within one process the lock is re-entrant (the training loop asks again for the lock its command line
already holds).

Shared-file lock (`file_lock`): a read-modify-write of a file that several runs update (thresholds.json
next to a checkpoint, which concurrent evals of that checkpoint extend) happens under an exclusive `flock`
on a companion file `.<name>.lock` in the same folder; a second writer waits for the first.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from energy_cli.errors import UserError

try:
    import fcntl
except ImportError:   # not a POSIX system: no locking
    fcntl = None      # type: ignore[assignment]

Handle = tuple[int, int]   # the locked folder's (device, inode)

# the run-folder locks this process holds: folder identity -> [descriptor, number of holders]
_HELD: dict[Handle, list[int]] = {}
_GUARD = threading.Lock()


def _identity(folder: Path) -> Handle:
    st = os.stat(folder)
    return st.st_dev, st.st_ino


def acquire(folder: Path) -> Handle | None:
    """Take the run-folder lock of the existing folder `folder` (re-entrant within this process) and return
    the handle for `release`. A folder locked by another process is a UserError; on a file system without
    flock the run goes unlocked."""
    if fcntl is None:
        return None
    folder = Path(folder)
    with _GUARD:
        key = _identity(folder)
        if key in _HELD:
            _HELD[key][1] += 1
            return key
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{folder} is in use by another energy-ood process that is still running; wait for it "
                            "to end, or choose another folder") from None
        except OSError:
            pass
        _HELD[key] = [fd, 1]
        return key


def release(handle: Handle | None) -> None:
    """Give back one hold of a lock `acquire` returned; the last one unlocks the folder."""
    if handle is None:
        return
    with _GUARD:
        entry = _HELD.get(handle)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[handle]
            os.close(entry[0])      # closing the only descriptor drops the flock


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold the run-folder lock of `folder` for the body (see `acquire`)."""
    handle = acquire(folder)
    try:
        yield
    finally:
        release(handle)


def holds(folder: Path) -> bool:
    """True when this process holds the run-folder lock of `folder`."""
    try:
        key = _identity(Path(folder))
    except OSError:
        return False
    with _GUARD:
        return key in _HELD


def is_locked(folder: Path) -> bool:
    """True when another process holds the run-folder lock of `folder` (a run that is still going)."""
    if fcntl is None or holds(folder):
        return False
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def is_lock_file(path: Path) -> bool:
    """Whether `path` is a lock companion (`.<name>.lock`) that `lock_file` names."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".lock") and len(name) > len("..lock")


def lock_file(path: Path) -> Path:
    """The companion file whose flock guards updates of the shared file `path`: `.<name>.lock` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = 300.0) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of the shared file `path`, waiting up to `timeout`
    seconds while another process (or thread) holds it. OSError when its folder is not writable."""
    if fcntl is None:
        yield
        return
    fd = os.open(lock_file(path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"{path} stayed locked by another energy-ood process for {timeout:.0f} s; "
                                    "let it finish and run this command again") from None
                time.sleep(0.02)
            except OSError:     # no flock on this file system
                break
        yield
    finally:
        os.close(fd)
