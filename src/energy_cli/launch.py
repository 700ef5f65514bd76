"""(command, overrides) -> a run: plan the run folder and resume=, run the command's Hydra app, turn config
errors into one line, and orchestrate torchrun ranks and SIGTERM."""

from __future__ import annotations

import os
import re
import sys
import warnings
from typing import Callable, Sequence

from energy_cli.config.paths import config_dir
from energy_cli.errors import PROG, Interrupted, UserError, fail

TRAINING_COMMANDS = ("train", "finetune")   # the commands that run data-parallel under torchrun


def _is_config_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, (HydraException, OmegaConfBaseException))


def _config_error_line(exc: BaseException) -> str:
    """Hydra's multi-line composition messages, folded into one line with a hint."""

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


def _plan_run(command: str, overrides: list[str]) -> tuple[list[str], object]:
    """Resolve resume= and plan the run folder (created, locked, checked before Hydra writes into it): the
    final overrides, and the planned folder (or None)."""
    from energy_cli.runs import resume
    from energy_cli.runs.folders import plan_run_folder, starts_a_job

    if starts_a_job(overrides):
        overrides = _report(lambda: resume.plan(command, overrides))  # type: ignore[assignment]
    try:
        return plan_run_folder(command, overrides)
    except UserError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


def _run_distributed(command: str, overrides: list[str], group) -> None:
    """train / finetune under torchrun: rank 0 plans the run (resume, run folder) and tells the others; every
    rank runs the same Hydra job in the same folder, only rank 0 writes Hydra's record and the outputs."""
    from energy_cli.engine import distributed
    from energy_cli.runs.folders import end_run_folder, is_multirun

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
            if group.is_main:
                end_run_folder(claimed, ok)
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


def launch(command: str, overrides: list[str]) -> None:
    """Run `command` with its Hydra overrides: under torchrun (training commands on every rank, the others on
    rank 0 alone) or as one process; plan resume= and the run folder first (locked until the command ends),
    remove what a failed run created without writing outputs, and turn SIGTERM outside the training loop
    into a one-line exit that says what was saved."""
    from energy_cli.engine import distributed  # lazy: keeps --help fast (no torch)
    from energy_cli.runs.folders import end_run_folder, stopped_message

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
        fail(stopped_message('SIGTERM' if signum == 15 else 'SIGINT', claimed), status=128 + signum)
    finally:
        _restore_sigterm(previous)
        end_run_folder(claimed, ok)
