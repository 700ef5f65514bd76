"""The process's memory allocator: keep freed memory for reuse instead of handing it back to the system.

PyTorch's CPU tensors come from the C library's malloc. glibc serves a large block (32 MB at most after it adapts,
128 kB at first) with a fresh `mmap` and returns it to the system on free, and it trims the top of its heap when
more than a threshold is free there. Each returned page is faulted in again on the next allocation that gets
it: a training step of WRN-40-2 on 32x32 images allocates and frees hundreds of megabytes of activations and
gradients, and on a virtual machine a page fault costs about a microsecond. Raising both thresholds keeps the
memory in the heap, so the next batch reuses pages that are already mapped: what jemalloc or tcmalloc would do.

The cost is memory: the process keeps its peak use instead of shrinking after it. `ENERGY_OOD_MALLOC=system`
leaves glibc's own behaviour. Measured effects: docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from energy_cli.errors import UserError

M_TRIM_THRESHOLD = -1     # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLDS = (1 << 30, 32 << 20)   # blocks up to 1 GiB come from the heap; older glibc accepts 32 MB at most
TRIM_THRESHOLD = (1 << 31) - 1   # mallopt takes an int: keep up to 2 GiB free at the heap's top

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (once per process). True when the settings are in effect: on Linux
    with glibc, unless ENERGY_OOD_MALLOC=system; False elsewhere (other C libraries, macOS, Windows). Raises
    UserError for any other value of ENERGY_OOD_MALLOC than keep (the default) or system."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def glibc() -> ctypes.CDLL | None:
    """This process's C library where it is glibc on Linux, else None: the mallopt numbers here are glibc's."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version   # only glibc has it
        libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


def _apply() -> bool:
    setting = os.environ.get("ENERGY_OOD_MALLOC", "").strip().lower() or "keep"
    if setting not in ("keep", "system"):
        raise UserError(f"ENERGY_OOD_MALLOC={os.environ['ENERGY_OOD_MALLOC']!r}: use 'keep' (the default: freed memory "
                        "is kept for reuse) or 'system' (the C library's own behaviour)")
    libc = None if setting == "system" else glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_set = any(mallopt(M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS)
    return mmap_set and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
