"""The run-folder lock: an flock on the folder, held while a run writes to it; the kernel drops it when the
process ends in any way (SIGKILL included), so a stale lock cannot exist."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from energy_cli.errors import UserError


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder while a run writes to it. The kernel drops it when the
    process ends in any way (SIGKILL included), so a stale lock cannot exist."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no locking
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder} is being written by another energy-ood process that is still running; "
                            "wait for it to end or stop it first") from None
        except OSError:  # a file system without flock: run unlocked
            pass
        yield
    finally:
        os.close(fd)


def is_locked(folder: Path) -> bool:
    """True when a running process holds `run_lock` on the folder."""
    try:
        import fcntl
    except ImportError:
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
