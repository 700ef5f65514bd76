"""argv -> (command, Hydra overrides) -> the command's Hydra app.

`energy-ood <command> [OVERRIDES...]` runs the Hydra application whose primary config is
`conf/<command>.yaml`; every Hydra flag (`-m`, `--cfg job`, `--help`, `hydra.run.dir=...`) keeps working.
This module only rewrites a few shorthands (`--ood a,b`; the positional paths of `report` and `score` into
a quoted `paths=[...]` list) and turns user errors into one-line messages.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from energy_cli.errors import Interrupted, UserError
from energy_cli.overrides import quote

PROG = "energy-ood"

TRAINING_COMMANDS = ("train", "finetune")   # the commands that run data-parallel under torchrun

COMMANDS: dict[str, str] = {
    "train": "pretrain a classifier with cross-entropy",
    "finetune": "fine-tune it: loss=energy (CE + lambda * energy hinge loss, default) or loss=oe",
    "eval": "OOD detection: scores -> FPR95 / AUROC / AUPR -> results.csv, thresholds.json",
    "report": "gather results.csv files (runs, sweeps) into report.csv / report.md",
    "score": "score image files or folders with a trained model -> scores.csv",
}

# Commands that take positional paths (`energy-ood report PATH...`), and the list key they become.
POSITIONAL: dict[str, str] = {"report": "paths", "score": "paths"}

USAGE = f"""usage: {PROG} <command> [OVERRIDES...]
       {PROG} <command> -m KEY=a,b ...      (a Hydra multirun sweep)
       {PROG} <command> --help | --cfg job   (Hydra's own flags)

commands:
""" + "".join(f"  {name:<9} {text}\n" for name, text in COMMANDS.items()) + f"""
examples:
  {PROG} train
  {PROG} finetune m_in=-23 m_out=-5
  {PROG} eval --ood gaussian,uniform score=all
  {PROG} finetune -m m_out=-3,-5
  {PROG} report multirun/eval/<date>_<time>
  {PROG} score my_images/ threshold=7.5

Every run prints the folder it writes to (outputs/<command>/<date>_<time>/ by default).
Configuration keys: {PROG} <command> --cfg job    Documentation: README.md"""


def config_dir() -> Path:
    """The folder holding the Hydra configs: inside the installed wheel, or the repository's conf/."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"energy-ood's configs are missing (looked in {package / 'conf'}); reinstall the package")


def expand_shorthands(args: Sequence[str]) -> list[str]:
    """`--ood a,b` and `--ood=a,b` -> `ood=[a,b]`; everything else is passed to Hydra unchanged."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--ood" or arg.startswith("--ood="):
            if arg == "--ood":
                if i + 1 >= len(args) or args[i + 1].startswith("-") or "=" in args[i + 1]:
                    raise UserError("--ood needs a comma-separated list of OOD sets, e.g. --ood svhn,lsun")
                value = args[i + 1]
                i += 1
            else:
                value = arg.split("=", 1)[1]
            names = [v.strip() for v in value.split(",") if v.strip()]
            if not names:
                raise UserError("--ood needs a comma-separated list of OOD sets, e.g. --ood svhn,lsun")
            out.append("ood=[" + ",".join(quote(n, mark='"') for n in names) + "]")
        else:
            out.append(arg)
        i += 1
    return out


# Hydra flags followed by a value, so that the value is not taken for a path.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def collect_paths(command: str, args: Sequence[str]) -> list[str]:
    """For commands with positional paths: the arguments that name files or folders become one list
    override, `paths=['a','b']` (quoted, so any file name works). An argument is a path when it exists
    on disk, or when it has no `=`; everything after `--` is a path."""
    key = POSITIONAL.get(command)
    if key is None:
        return list(args)
    out, paths = [], []
    i, only_paths = 0, False
    while i < len(args):
        arg = args[i]
        if only_paths:
            paths.append(arg)
        elif arg == "--":
            only_paths = True
        elif arg.startswith("-"):
            out.append(arg)
            takes_value = arg in _FLAGS_WITH_VALUE or (arg in ("--info", "-i") and i + 1 < len(args)
                                                       and args[i + 1] in _INFO_TOPICS)
            if takes_value and i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        elif os.path.lexists(arg) or ("=" not in arg and not re.fullmatch(r"~[\w.]+", arg)):
            paths.append(arg)
        else:
            out.append(arg)
        i += 1
    if paths:
        if any(a.lstrip("+").startswith(f"{key}=") for a in out):
            raise UserError(f"give the paths either as arguments or as {key}=[...], not both")
        out.append(f"{key}=[" + ",".join(quote(p) for p in paths) + "]")
    return out


def fail(message: str, status: int = 2) -> None:
    """Print one line to stderr and exit: the way every user error ends."""
    message = " ".join(message.split())
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(status)


def _is_config_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, (HydraException, OmegaConfBaseException))


def _config_error_line(exc: BaseException) -> str:
    """Hydra's multi-line composition messages, folded into one line with a hint."""
    import re

    missing = re.search(r"Could not find '([\w/]+)/([^'/]+)'\s*Available options in '[\w/]+':\s*((?:\s*\S+\n?)*?)\s*"
                        r"(?:Config search path|$)", str(exc))
    if missing:   # an unknown config-group choice, e.g. dataset=mnist
        group, name, options = missing.group(1), missing.group(2), missing.group(3).split()
        return f"{group}={name} is not known; choose one of: {', '.join(options)}"
    command = sys.argv[0].split(f"{PROG}-", 1)[1] if sys.argv and sys.argv[0].startswith(f"{PROG}-") else "<command>"
    unknown = re.search(r"Could not override '([^']+)'", str(exc))
    if unknown and "not in struct" in f"{exc} {exc.__cause__}":   # a key no config defines (Hydra would suggest `+key=`)
        return (f"unknown key '{unknown.group(1)}'; see the keys with: {PROG} {command} --cfg job "
                "(a typo? keys are case-sensitive)")
    parts = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = exc.__cause__
    if cause is not None:
        parts += [line.strip() for line in str(cause).splitlines()[:1] if line.strip()]
    text = "; ".join(dict.fromkeys(parts)) or type(exc).__name__
    if "Could not override" in text or "not in struct" in text or "Key '" in text:
        text += f" (list the keys with: {PROG} {command} --cfg job)"
    return text


def _report(func: Callable[[], object]) -> object:
    """Stands in for Hydra's run_and_report: user and config errors become one line, bugs keep a traceback."""
    try:
        return func()
    except UserError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - re-raised below unless it is a config error
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not _is_config_error(exc):
            raise
        fail(_config_error_line(exc))
    return None


def _task(cfg) -> object:
    """The Hydra task: run the command; a user error ends the program here with its one line (so Hydra
    adds no "Error executing job" banner; in a sweep, the remaining jobs do not start)."""
    from omegaconf.errors import OmegaConfBaseException

    from energy_cli.commands import run_command

    try:
        return run_command(cfg)
    except UserError as exc:
        fail(str(exc))
    except Interrupted as exc:
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(exc.status) from None
    except OmegaConfBaseException as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(_config_error_line(exc))
    return None


def run_hydra(command: str, overrides: Sequence[str]) -> None:
    """Run the command's Hydra app with the given overrides, as if typed on the command line."""
    import hydra
    import hydra._internal.utils as hydra_utils

    hydra_utils.run_and_report = _report
    # conf/hydra/launcher/submitit_slurm.yaml deliberately shares the SLURM plugin's config name (and is
    # checked against its schema); Hydra warns about that pattern on every run
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")
    saved_argv = sys.argv
    sys.argv = [f"{PROG}-{command}", *overrides]
    try:
        app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=command)(_task)
        app()
    finally:
        sys.argv = saved_argv


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(USAGE + "\n")
        raise SystemExit(2)
    if args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if args[0] == "--version":
        from energy_cli import __version__

        print(f"{PROG} {__version__}")
        return
    command, rest = args[0], args[1:]
    try:
        if command not in COMMANDS:
            raise UserError(f"unknown command '{command}'; choose one of: {', '.join(COMMANDS)} ({PROG} --help)")
        overrides = collect_paths(command, expand_shorthands(rest))
    except UserError as exc:
        fail(str(exc))
    from energy_cli import distributed
    from energy_cli.runs import remove_if_unused

    group = distributed.from_env()
    if group.enabled:   # started by torchrun
        if command not in TRAINING_COMMANDS:
            if not group.is_main:
                return      # eval and the other commands run on rank 0 alone
        else:
            _run_distributed(command, overrides, group)
            return
    overrides, claimed = _plan_run(command, overrides)
    ok = False
    previous = _stop_on_sigterm()
    try:
        run_hydra(command, overrides)
        ok = True
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", 2)
        fail(f"stopped by {'SIGTERM' if signum == 15 else 'SIGINT'} before training started; nothing was saved",
             status=128 + signum)
    finally:
        _restore_sigterm(previous)
        if not ok:
            remove_if_unused(claimed)


def _plan_run(command: str, overrides: list[str]) -> tuple[list[str], object]:
    """Resolve resume= and claim a fresh run folder: the final overrides, and the claimed folder (or None)."""
    from energy_cli import resume
    from energy_cli.runs import starts_a_job, with_run_folder

    if starts_a_job(overrides):
        overrides = _report(lambda: resume.plan(command, overrides))  # type: ignore[assignment]
    try:
        return with_run_folder(command, overrides)
    except UserError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


def _run_distributed(command: str, overrides: list[str], group) -> None:
    """train / finetune under torchrun: rank 0 plans the run (resume, run folder) and tells the others; every
    rank runs the same Hydra job in the same folder, only rank 0 writes Hydra's record and the outputs."""
    from energy_cli import distributed
    from energy_cli.runs import is_multirun, remove_if_unused

    if is_multirun(overrides):
        fail("-m sweeps do not run under torchrun; start one torchrun per job, or sweep with a Hydra launcher "
             "(hydra/launcher=submitit_slurm) whose jobs use several GPUs")
    distributed.init(distributed.backend_for(overrides))
    claimed = None
    try:
        if group.is_main:
            try:
                overrides, claimed = _plan_run(command, overrides)
                plan: tuple = ("run", overrides)
            except SystemExit as exc:          # the one-line error is printed; the other ranks stop too
                plan = ("exit", exc.code)
            plan = distributed.broadcast(plan)
        else:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 alone prints the run's story
            plan = distributed.broadcast(None)
        if plan[0] == "exit":
            raise SystemExit(plan[1])
        overrides = list(plan[1])
        if not group.is_main and not any(o.startswith("hydra.output_subdir=") for o in overrides):
            overrides.append("hydra.output_subdir=null")   # rank 0 writes .hydra/
        ok = False
        try:
            run_hydra(command, overrides)
            ok = True
        finally:
            if not ok and group.is_main:
                remove_if_unused(claimed)
        distributed.barrier()   # every rank is done with the group before any rank takes it down
    finally:
        distributed.shutdown()


def _stop_on_sigterm() -> object:
    """Until training installs its own handler (which saves first), SIGTERM ends the program like Ctrl-C."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        stop = KeyboardInterrupt()
        stop.signum = signum  # type: ignore[attr-defined]
        raise stop

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous: object) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
