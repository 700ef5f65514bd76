"""Run folders: every run gets a folder of its own, locked while the command runs, so nothing an earlier
or a concurrent run wrote is overwritten, and a failed run leaves nothing behind.

Hydra names the folder from the clock (`outputs/<command>/<date>_<time>`); two runs started in the same
second would share it. The CLI therefore claims the folder itself before Hydra starts: it creates it with
an exclusive mkdir (adding `_1`, `_2`, ... when the name is taken) and passes it as `hydra.run.dir`
(or `hydra.sweep.dir` for `-m`). A folder the user names, with `hydra.run.dir=` on the command line or in
a config file (an experiment preset of their own, a --config-dir), is used as given.

Either way `plan_run_folder` creates the folder (and its missing parents), takes its lock (runs/locks.py)
and checks it holds no earlier run's outputs, all before Hydra writes its `.hydra/` record; problems with
the folder (a file of that name, no permission, a read-only or full disk, a name too long) end in one line.
`end_run_folder` releases the lock; after a failed run it removes what the run created without writing any
output (the folders it made, or a new `.hydra/` in a folder that existed).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from energy_cli.config.overrides import last_value, sets_key
from energy_cli.errors import UserError
from energy_cli.runs.locks import Handle, acquire, is_lock_file, release

RUN_ROOT, SWEEP_ROOT = "outputs", "multirun"
STAMP = "%Y-%m-%d_%H-%M-%S"

# Hydra flags that only print something and never start a job.
_INFO_FLAGS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")


def is_multirun(args: Sequence[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in args)


def starts_a_job(args: Sequence[str]) -> bool:
    return not any(a in _INFO_FLAGS or a.startswith(("--cfg=", "--info=")) for a in args)


def claim_folder(parent: Path, stamp: str | None = None) -> Path:
    """Create and return parent/<stamp>, or parent/<stamp>_N for the first free N (exclusive mkdir)."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = stamp or time.strftime(STAMP)
    for n in range(10_000):
        path = parent / (stamp if n == 0 else f"{stamp}_{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not find a free run folder under {parent}")


@dataclass
class RunFolder:
    """The folder one command runs in, as planned before Hydra starts."""

    key: str                                   # hydra.run.dir or hydra.sweep.dir
    path: Path                                 # the folder (relative to the current folder, as given)
    created: list[Path] = field(default_factory=list)   # the folders made for it, outermost first
    before: frozenset[str] = frozenset()       # the names it held before the run
    handle: Handle | None = None               # its lock
    started: float = 0.0                       # time.time() when it was planned


def plan_run_folder(command: str, args: Sequence[str]) -> tuple[list[str], RunFolder | None]:
    """`args` plus `hydra.run.dir=` (or `hydra.sweep.dir=` for `-m`) naming a freshly claimed folder unless the
    user chose one; the folder created, locked and checked (see the module docstring). Returns the
    arguments and the planned folder; None when the arguments start no job, or when the folder is an
    interpolation that Hydra resolves (the command then locks it when it starts)."""
    args = list(args)
    if not starts_a_job(args):
        return args, None
    multirun = is_multirun(args)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    started = time.time()
    chosen = chosen_folder(command, args, multirun)
    if chosen is not None:
        value, overwrite, resumes = chosen
        if "${" in value:
            return args, None
        path = Path(value).expanduser()
        setting = f"{key}={value}"
        created = make_folders(path, setting)
    else:
        parent = Path(SWEEP_ROOT if key == "hydra.sweep.dir" else RUN_ROOT) / command
        setting = f"the run folder {parent}/"
        created = make_folders(parent, setting)
        try:
            path = claim_folder(parent)
        except OSError as exc:
            _remove_empty(created)
            raise UserError(folder_error(exc, parent, setting)) from None
        created.append(path)
        args.append(f"{key}={path.as_posix()}")
    before = frozenset() if path in created else frozenset(os.listdir(path))
    if path not in created and not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {setting}: permission denied; choose a folder you can write to")
    handle = acquire(path)            # another process running in this folder: one line, nothing touched
    planned = RunFolder(key, path, created, before, handle, started)
    try:
        if path not in created and chosen is not None:
            check_unused(key, *chosen)
    except BaseException:
        end_run_folder(planned, ok=False)
        raise
    return args, planned


def end_run_folder(folder: RunFolder | None, ok: bool) -> None:
    """Release the folder's lock; after a failed run (ok=False) first remove what the run created without
    writing outputs into it: the folders made for it, or the new entries (such as `.hydra/`) of a folder
    that existed."""
    if folder is None:
        return
    try:
        if not ok:
            _remove_unused(folder)
    finally:
        release(folder.handle)
        folder.handle = None


def _remove_unused(folder: RunFolder) -> None:
    path = folder.path
    if not path.is_dir():
        return
    if path in folder.created:
        if not earlier_outputs(path):
            shutil.rmtree(path, ignore_errors=True)
            _remove_empty(folder.created)
        return
    outputs = earlier_outputs(path)
    for name in sorted(set(os.listdir(path)) - folder.before):
        entry = path / name
        if entry.is_dir() and not entry.is_symlink() and not any(entry in p.parents for p in outputs):
            shutil.rmtree(entry, ignore_errors=True)


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders of `created` (outermost first) that are empty, innermost first."""
    for folder in reversed(created):
        if not os.path.lexists(folder):
            continue
        try:
            os.rmdir(folder)
        except OSError:
            return


def written_since(folder: RunFolder | None) -> list[Path]:
    """The outputs of the folder written since it was planned (what a stopped run leaves)."""
    if folder is None:
        return []
    out = []
    for path in earlier_outputs(folder.path):
        try:
            if path.stat().st_mtime >= folder.started or folder.path in folder.created:
                out.append(path)
        except OSError:
            continue
    return out


def stopped_message(signal_name: str, folder: RunFolder | None) -> str:
    """The line for a command stopped by a signal outside the training loop: what it saved, truthfully."""
    written = written_since(folder)
    if not written or folder is None:
        return f"stopped by {signal_name} before the run saved anything; nothing was written"
    names = ", ".join(str(p.relative_to(folder.path)) for p in written[:6]) + (", ..." if len(written) > 6 else "")
    return (f"stopped by {signal_name} before the run finished; {display_path(folder.path)} keeps what it wrote "
            f"before: {names}")


def make_folders(folder: Path, setting: str) -> list[Path]:
    """Create `folder` and its missing parents; return the ones created, outermost first. A file in the way,
    a name too long, no permission, a read-only or full disk: a one-line UserError naming `setting`."""
    missing = []
    path = Path(folder)
    try:
        while not path.is_dir():
            if os.path.lexists(path):
                raise UserError(f"{setting}: {path} is a file, not a folder; choose another folder")
            if path.parent == path:
                break
            missing.append(path)
            path = path.parent
    except OSError as exc:          # a name too long, a folder that cannot be searched
        raise UserError(folder_error(exc, path, setting)) from None
    created: list[Path] = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            if path.is_dir():        # made by a concurrent process meanwhile: not ours to remove
                continue
            _remove_empty(created)
            raise UserError(f"{setting}: {path} is a file, not a folder; choose another folder") from None
        except OSError as exc:
            _remove_empty(created)
            raise UserError(folder_error(exc, path, setting)) from None
        created.append(path)
    return created


def folder_error(exc: OSError, path: Path, setting: str) -> str:
    """One line for an OSError met while creating `path` for `setting`."""
    default = setting.startswith("the run folder")
    where = ("run energy-ood from a folder you can write to, or choose one with hydra.run.dir=PATH" if default
             else "choose another folder")
    if exc.errno == errno.ENAMETOOLONG:
        return f"{setting}: the name is too long for the file system; choose a shorter one"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot create {path} for {setting}: {exc.strerror}; {where}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot create {path} for {setting}: {exc.strerror}; free some space or {where}"
    if exc.errno == errno.ENOTDIR:
        return f"{setting}: a part of {path} is a file, not a folder; choose another folder"
    return f"cannot create {path} for {setting}: {exc.strerror or exc}; {where}"


def chosen_folder(command: str, args: Sequence[str], multirun: bool) -> tuple[str, bool, bool] | None:
    """The run folder (sweep folder with -m) the user chose, with their overwrite= and whether the run
    resumes: (folder, overwrite, resumes), or None when the config keeps the default pattern of
    conf/hydra/default.yaml. The folder may be set on the command line or in any config the run composes."""
    from omegaconf import OmegaConf

    from energy_cli.config.compose import compose_config, default_hydra_dirs

    key, node = ("hydra.sweep.dir", "sweep") if multirun else ("hydra.run.dir", "run")
    try:
        cfg = compose_config(command, args, with_hydra=True)
    except Exception:  # noqa: BLE001 - the config does not compose: Hydra says why when it runs
        if not sets_key(args, key):
            return None
        return (str(last_value(args, key)), str(last_value(args, "overwrite")).lower() == "true",
                last_value(args, "resume") not in (None, "null", "false"))
    folder = str(OmegaConf.to_container(cfg.hydra[node], resolve=False)["dir"])
    if folder == default_hydra_dirs()[node]:
        return None
    return folder, cfg.get("overwrite") is True, cfg.get("resume") not in (None, False)


def check_unused(key: str, folder: str, overwrite: bool = False, resumes: bool = False) -> None:
    """Before Hydra writes its record into a folder the user chose (`hydra.run.dir` / `hydra.sweep.dir`):
    refuse one that holds outputs of an earlier run, unless overwrite=true (a resumed run is planned into
    its own folder and passes resume=). A folder still holding an interpolation (`${now:...}`) is not checked."""
    if "${" in folder or resumes or overwrite:
        return
    found = earlier_outputs(Path(folder).expanduser())
    if found:
        raise UserError(f"{key}={folder} already holds {found[0].relative_to(Path(folder).expanduser())} from an "
                        "earlier run; choose another folder, resume that run with resume=PATH, or add overwrite=true")


def earlier_outputs(folder: Path) -> list[Path]:
    """The files in a run folder besides Hydra's own record (.hydra/, *.log, a sweep's multirun.yaml) and the
    empty lock companions (`.<name>.lock`): what a run wrote there."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and ".hydra" not in p.relative_to(folder).parts
                  and p.suffix != ".log" and not is_lock_file(p) and not (p.name == "multirun.yaml" and p.parent == folder))


def search_roots() -> list[Path]:
    """Where `ckpt=null` looks for earlier runs: outputs/ and multirun/ under the current folder."""
    return [Path.cwd() / RUN_ROOT, Path.cwd() / SWEEP_ROOT]


def display_path(path: Path) -> str:
    """`path` relative to the current folder when it lies below it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
