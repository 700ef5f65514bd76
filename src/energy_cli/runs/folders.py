"""Run folders: every run gets a fresh folder of its own, so nothing an earlier run wrote is overwritten.

Hydra names the folder from the clock (`outputs/<command>/<date>_<time>`); two runs started in the same
second would share it. The CLI therefore claims the folder itself before Hydra starts: it creates it with
an exclusive mkdir (adding `_1`, `_2`, ... when the name is taken) and passes it as `hydra.run.dir`
(or `hydra.sweep.dir` for `-m`). A folder the user names, with `hydra.run.dir=` on the command line or in
a config file (an experiment preset of their own, a --config-dir), is used as given.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Sequence

from energy_cli.config.overrides import last_value, sets_key
from energy_cli.errors import UserError

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


def with_run_folder(command: str, args: Sequence[str]) -> tuple[list[str], Path | None]:
    """`args` plus `hydra.run.dir=` (or `hydra.sweep.dir=`) naming a freshly claimed folder, unless the
    composed config names a folder of its own (see `chosen_folder`) or the arguments start no job. Returns
    the arguments and the claimed folder (or None)."""
    args = list(args)
    if not starts_a_job(args):
        return args, None
    multirun = is_multirun(args)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    chosen = chosen_folder(command, args, multirun)
    if chosen is not None:
        check_unused(key, *chosen)
        return args, None
    folder = claim_folder(Path(SWEEP_ROOT if multirun else RUN_ROOT) / command)
    return [*args, f"{key}={folder.as_posix()}"], folder


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
    """The files in a run folder besides Hydra's own record (.hydra/, *.log): what a run wrote there."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log")


def remove_if_unused(folder: Path | None) -> None:
    """Delete a claimed run folder that ended up holding nothing but Hydra's own .hydra record
    (the run failed before writing anything)."""
    if folder is None or not folder.is_dir():
        return
    if not earlier_outputs(folder):
        shutil.rmtree(folder, ignore_errors=True)
        parent = folder.parent
        try:
            if parent.is_dir() and not any(parent.iterdir()):
                os.rmdir(parent)
        except OSError:
            pass


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
