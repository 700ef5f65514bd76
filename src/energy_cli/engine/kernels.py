"""Native kernels: C sources shipped in this package, compiled once per machine with the system's C compiler
and loaded with ctypes.

The shared library goes into the user cache folder (`$XDG_CACHE_HOME/energy-ood/kernels/`, like the probe's
answer), under a name made from a hash of the source, the compiler and its flags: a changed source or another
instruction set builds a new file, and an unchanged one is loaded without compiling. The library is written to
a temporary file and renamed, so a process never loads half a file, and two processes building at once both end
with a whole one. No compiler (or a failed build) is not an error here: `load` returns None and `why_not` says
why, and the callers fall back to PyTorch's own kernels.

The compiler is `$CC`, else `cc`. On x86-64 machines whose kernels may use AVX2 (ATen's CPU capability, which
`ATEN_CPU_CAPABILITY` can lower) the code is built with `-mavx2 -mfma`, and with `-mavx512f` too where they may
use AVX-512; elsewhere for the baseline instruction set.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from energy_cli.config.paths import user_cache_dir

log = logging.getLogger(__name__)

BUILD_SECONDS = 120
_LOADED: dict[str, ctypes.CDLL | None] = {}
_WHY_NOT: dict[str, str] = {}


def source_path(name: str) -> Path:
    return Path(__file__).with_name(f"{name}.c")


# The compiler flags for each of ATen's CPU capabilities the kernels are built for (the first that the capability
# starts with: "AVX512" also covers AVX512_VNNI etc.); any other capability builds for the baseline ISA.
ISA_FLAGS = {"AVX512": ["-mavx2", "-mfma", "-mavx512f"], "AVX2": ["-mavx2", "-mfma"]}


def cpu_capability() -> str:
    """ATen's CPU capability in capitals ("AVX512", "AVX2", "DEFAULT", ...; `ATEN_CPU_CAPABILITY` can lower it),
    "" where this torch cannot say."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # noqa: BLE001 - an older torch without the query: the baseline is always safe
        return ""


def isa_flags() -> list[str]:
    """-mavx2 -mfma where ATen's kernels may use AVX2 on an x86-64 CPU, and -mavx512f too where they may use
    AVX-512; else nothing (the baseline ISA)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    capability = cpu_capability()
    return next((list(flags) for isa, flags in ISA_FLAGS.items() if capability.startswith(isa)), [])


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC") or "cc")


def build_command(cc: str, source: Path, output: Path) -> list[str]:
    return [cc, "-O3", "-std=gnu99", "-shared", "-fPIC", *isa_flags(), "-o", str(output), str(source)]


def library_path(name: str, cc: str) -> Path:
    """The cache file of kernel `name` built by `cc` with this machine's flags."""
    digest = hashlib.sha256()
    digest.update(source_path(name).read_bytes())
    digest.update(" ".join([os.path.realpath(cc), *build_command("cc", Path("s"), Path("o"))[1:]]).encode())
    digest.update(platform.machine().encode())
    return user_cache_dir() / "kernels" / f"{name}-{digest.hexdigest()[:16]}.so"


def build(name: str, cc: str, output: Path) -> None:
    """Compile kernel `name` into `output` (via a temporary file in the same folder, then a rename)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".so", dir=output.parent)
    os.close(fd)
    try:
        done = subprocess.run(build_command(cc, source_path(name), Path(tmp)), capture_output=True, text=True,
                              timeout=BUILD_SECONDS)
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0][:200]
            raise OSError(f"{Path(cc).name} failed: {first}")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(name: str) -> ctypes.CDLL | None:
    """Kernel `name` (`<name>.c` beside this file) as a loaded library, built first if this machine has no copy;
    None where it cannot be built or loaded (`why_not(name)` says why). Remembered for the process."""
    if name in _LOADED:
        return _LOADED[name]
    lib = None
    try:
        cc = compiler()
        if cc is None:
            raise OSError(f"no C compiler ({os.environ.get('CC') or 'cc'} not found; set CC)")
        path = library_path(name, cc)
        if not path.exists():
            log.debug(f"building the {name} kernels: {path}")
            build(name, cc, path)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:   # a damaged copy (a full disk, another machine sharing this home): build it again, once
            build(name, cc, path)
            lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        _WHY_NOT[name] = str(exc) or type(exc).__name__
    _LOADED[name] = lib
    return lib


OPENMP_RUNTIMES = ("libgomp", "libiomp5")


def pick_openmp_runtime(paths: list[str], torch_dir: str) -> str | None:
    """Of the loaded libraries `paths`, PyTorch's OpenMP runtime: one under its package folder `torch_dir` (or the
    `torch.libs` folder beside it, where wheels put their bundled libraries); else the only OpenMP runtime loaded;
    else None. Other packages bring their own copies (scikit-learn's wheels bundle a libgomp): running on one of
    those would be a second thread team beside PyTorch's."""
    runtimes = sorted({p for p in paths if os.path.basename(p).startswith(OPENMP_RUNTIMES)})
    parent = os.path.dirname(os.path.normpath(torch_dir))
    homes = (os.path.normpath(torch_dir) + os.sep, os.path.join(parent, "torch.libs") + os.sep)
    own = [p for p in runtimes if p.startswith(homes)]
    if own:
        return own[0]
    return runtimes[0] if len(runtimes) == 1 else None


def openmp_entry_points() -> tuple[int, int, int] | None:
    """The addresses of GOMP_parallel, omp_get_thread_num and omp_get_num_threads in PyTorch's OpenMP runtime
    (GNU libgomp, or Intel's libiomp5, which offers the same entry points), found among the libraries this
    process has loaded, so that kernels run on PyTorch's own thread team; None where there is none (another
    parallel backend, not Linux)."""
    import torch

    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split(maxsplit=5)[-1].strip() for line in maps if "/lib" in line]
    except OSError:
        return None
    path = pick_openmp_runtime(paths, os.path.dirname(os.path.realpath(torch.__file__)))
    if path is None or not os.path.exists(path):
        return None
    try:
        runtime = ctypes.CDLL(path)
        names = ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")
        return tuple(ctypes.cast(getattr(runtime, n), ctypes.c_void_p).value for n in names)
    except (OSError, AttributeError):
        return None


def why_not(name: str) -> str:
    """Why `load(name)` returned None ("" when it did not)."""
    return _WHY_NOT.get(name, "")


def forget() -> None:
    """Drop what this process remembered (tests: a changed $CC or cache folder is looked at again)."""
    _LOADED.clear()
    _WHY_NOT.clear()
