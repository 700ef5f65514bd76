"""Files every output shares, free of torch: atomic writes (readers see the old file or the new one, never half
of one) and safe file-name parts."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a partial one:
    write a temporary file in the same folder, fsync it, rename it over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files an atomic write leaves behind when its process is killed mid-write
    (`.<name>.<random>.tmp`); call it only while no other process writes to `folder`."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_part(text: str, empty: str = "_") -> str:
    """`text` made safe inside a file name: every run of characters other than letters, digits, `_`, `.`
    and `-` becomes one `_` (an OOD set `folder:/my imgs` -> `folder_my_imgs`)."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or empty
