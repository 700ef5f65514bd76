"""Resuming an interrupted `train` / `finetune` run.

    resume=PATH   continue the run whose checkpoint.pt (or run folder) is PATH
    resume=true   continue the newest interrupted run of this command whose config equals this one
    resume=auto   the same, or start a new run when there is none (for job scripts that are simply rerun)

Before Hydra starts, `plan()` (called by launch.py) turns the `resume=` argument into the interrupted run's
folder (`hydra.run.dir`) and the overrides that run was started with, followed by the ones typed now; the
resumed run therefore composes the same config and writes into the same folder. Inside the run,
`load_for_resume()` loads the checkpoint and refuses a config that differs from it in anything but the
keys in VOLATILE_KEYS; `restore()` puts weights, optimiser, scheduler and loop position back (the RNG
states are restored by the caller right before the loop, with `engine.seeding.set_rng_state`). A running
run's folder is locked (runs/locks.py), so it is never picked up a second time."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any, Sequence

from energy_cli.config.overrides import key_of, last_value, quote
from energy_cli.engine.ranks import from_env
from energy_cli.errors import UserError
from energy_cli.runs import checkpoint as ckpt_io
from energy_cli.runs.folders import display_path, is_multirun, search_roots
from energy_cli.runs.locks import is_locked

log = logging.getLogger(__name__)

# Keys a resumed run may change: where and how fast it computes, what it prints, how often it saves.
VOLATILE_KEYS = ("resume", "device", "precision", "progress", "eval_batch_size", "data_root", "download",
                 "checkpoint_every_steps", "overwrite", "threads", "compile", "channels_last", "probe",
                 "cuda_graphs")


# The checkpoint stages each command writes.
STAGES_OF = {"train": ("pretrain",), "finetune": ("energy", "oe")}


_OFF = ("", "null", "none", "false", "~")


_SEARCH = ("true", "auto")


def resume_value(args: Sequence[str]) -> str | None:
    """The value of the last `resume=` override in `args` (unquoted), or None."""
    return last_value(args, "resume")


def resume_command(command: str, path: Path) -> str:
    """The shell command that continues the run whose checkpoint is `path`."""

    return f"energy-ood {command} " + shlex.quote(f"resume={quote(display_path(path))}")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every key that differs, ignoring VOLATILE_KEYS."""
    a, b = _flatten(saved), _flatten(now)
    missing = object()
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in VOLATILE_KEYS:
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            diffs.append((key, None if va is missing else va, None if vb is missing else vb))
    return diffs


def _check_resumable(command: str, path: Path, ckpt: dict[str, Any]) -> None:
    stage = ckpt.get("stage")
    if stage not in STAGES_OF[command]:
        other = next((c for c, stages in STAGES_OF.items() if stage in stages), None)
        hint = f"; resume it with: {resume_command(other, path)}" if other else ""
        raise UserError(f"resume={path}: it is a checkpoint of stage {stage}, not of `energy-ood {command}`{hint}")
    if ckpt.get("finished"):
        epochs = (ckpt.get("config") or {}).get("epochs", "?")
        raise UserError(f"resume={path}: that run finished (epoch {ckpt.get('epoch')} of {epochs}); nothing to "
                        f"resume; evaluate it with: energy-ood eval ckpt={path}")
    if from_env().rank == 0 and is_locked(path.parent):   # under torchrun, rank 0 holds the lock for all ranks
        raise UserError(f"resume={path}: that run is still running (its folder is locked by another process); "
                        "stop it first, it saves a checkpoint to resume from")


def _checkpoint_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path / ckpt_io.FILENAME if path.is_dir() else path


def composed_config(command: str, args: Sequence[str]) -> dict[str, Any]:
    """The resolved config `energy-ood command args` would run with (Hydra's compose API, no run)."""
    from omegaconf import OmegaConf

    from energy_cli.config.compose import compose_config

    args = [a for a in args if not key_of(a).startswith("hydra.") and key_of(a) != "resume"]
    cfg = compose_config(command, args)
    if OmegaConf.select(cfg, "dataset.name") == "folder":   # its num_classes=auto is counted, as in the run
        from energy_cli.data import class_count

        cfg.dataset.num_classes = class_count(OmegaConf.to_container(cfg.dataset, resolve=True))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def find_interrupted(command: str, config: dict[str, Any], roots: Sequence[Path]) -> Path | None:
    """The newest unfinished, not running checkpoint of `command` under `roots` whose config equals
    `config` (VOLATILE_KEYS aside)."""
    stages = STAGES_OF[command]

    def matches(ckpt: dict[str, Any]) -> bool:
        return (ckpt.get("stage") in stages and not ckpt.get("finished")
                and isinstance(ckpt.get("config"), dict) and not config_differences(ckpt["config"], config))

    for path in ckpt_io.candidate_checkpoints(roots):
        if is_locked(path.parent):
            continue
        ckpt = ckpt_io.peek(path)
        if ckpt is not None and matches(ckpt):
            return path
    return None


def plan(command: str, args: Sequence[str]) -> list[str]:
    """Rewrite the arguments of a `resume=` run so that Hydra runs it in the interrupted run's folder with
    that run's overrides (then the ones given now). Arguments without `resume=` come back unchanged. The
    original command repeated with `resume=` added works too: with `hydra.run.dir=FOLDER`, resume=true / auto
    continue the run in FOLDER, and resume=PATH must name a checkpoint in FOLDER."""

    args = list(args)
    value = resume_value(args)
    if value is None or value.lower() in _OFF:
        return args
    if command not in STAGES_OF:
        return args                      # Hydra reports the unknown key
    if is_multirun(args):
        raise UserError("resume= cannot be combined with -m; resume each job of a sweep on its own with "
                        "resume=PATH_TO_ITS_checkpoint.pt")
    folder = last_value(args, "hydra.run.dir")       # the original command repeated, with its folder
    if folder is not None and "${" in folder:
        raise UserError(f"hydra.run.dir={folder}: a resumed run continues in the interrupted run's own folder; "
                        "name that folder plainly, or drop hydra.run.dir=")
    if value.lower() in _SEARCH and folder is not None:
        path = Path(folder).expanduser() / ckpt_io.FILENAME
        if not path.is_file():
            if value.lower() == "auto":
                log.info(f"energy-ood {command}: no interrupted run in {folder} to resume; starting a new run there")
                return [a for a in args if key_of(a) != "resume"]
            raise UserError(f"resume={value}: hydra.run.dir={folder} holds no {ckpt_io.FILENAME} to resume; drop "
                            "resume= to start a new run there")
    elif value.lower() in _SEARCH:
        path = find_interrupted(command, composed_config(command, args), search_roots())
        if path is None:
            if value.lower() == "auto":
                log.info(f"energy-ood {command}: no interrupted run with this config to resume; starting a new run")
                return [a for a in args if key_of(a) != "resume"]
            raise UserError(f"resume=true: no interrupted `{command}` run with this config under outputs/ or "
                            "multirun/ here; pass resume=PATH to a checkpoint.pt, or drop resume= to start anew")
    else:
        path = _checkpoint_path(value)
        if folder is not None and path.parent.resolve() != Path(folder).expanduser().resolve():
            raise UserError(f"resume={value} continues in its own folder {path.parent}, not in hydra.run.dir={folder}; "
                            "drop hydra.run.dir= (or name that folder)")
    ckpt = ckpt_io.load_checkpoint(path)
    _check_resumable(command, path, ckpt)
    path = path.resolve()
    earlier = [o for o in ckpt.get("overrides", []) if key_of(o) != "resume" and not key_of(o).startswith("hydra.")]
    now = [a for a in args if key_of(a) not in ("resume", "hydra.run.dir", "hydra.output_subdir")]
    return [*earlier, *now, f"resume={quote(str(path))}",
            f"hydra.run.dir={quote(str(path.parent))}", "hydra.output_subdir=null"]


def load_for_resume(cfg: Any) -> dict[str, Any] | None:
    """The checkpoint to resume from (`resume=PATH`, as planned by the CLI), checked against the config;
    None when the run starts anew."""
    from omegaconf import OmegaConf

    value = cfg.get("resume")
    if value is None or value is False or str(value).lower() in _OFF:
        return None
    if value is True or str(value).lower() in _SEARCH:
        raise UserError(f"resume={value} is resolved by the energy-ood command line; run "
                        f"`energy-ood {cfg.command} resume={str(value).lower()}` or pass resume=PATH")
    path = _checkpoint_path(str(value))
    ckpt = ckpt_io.load_checkpoint(path)
    _check_resumable(str(cfg.command), path, ckpt)
    diffs = config_differences(ckpt.get("config") or {}, OmegaConf.to_container(cfg, resolve=True))
    if diffs:
        key, saved, now = diffs[0]
        raise UserError(f"resume={path}: the interrupted run has {key}={saved}, this command {key}={now}; a resumed "
                        f"run keeps its settings (only {', '.join(VOLATILE_KEYS[1:])} may change)")
    return ckpt


