"""(command, overrides) -> a run: plan the run folder and resume=, run the command's Hydra app, turn config
errors into one line, and orchestrate torchrun ranks and SIGTERM."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from typing import Iterator, Sequence

from energy_cli.config.logs import console_logging
from energy_cli.config.overrides import sets_key
from energy_cli.config.paths import config_dir
from energy_cli.config.schema import type_error_line
from energy_cli.errors import PROG, Interrupted, UserError, fail

TRAINING_COMMANDS = ("train", "finetune")   # the commands that run data-parallel under torchrun


def _is_config_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, (HydraException, OmegaConfBaseException))


def _config_error_line(exc: BaseException, command: str) -> str:
    """Hydra's multi-line composition messages, folded into one line with a hint; a value the schema's type
    refused gets the words of its key's rule."""
    typed = type_error_line(exc)
    if typed is not None:
        return typed

    missing = re.search(r"Could not find '([\w/]+)/([^'/]+)'\s*Available options in '[\w/]+':\s*((?:\s*\S+\n?)*?)\s*"
                        r"(?:Config search path|$)", str(exc))
    if missing:   # an unknown config-group choice, e.g. dataset=mnist
        group, name, options = missing.group(1), missing.group(2), missing.group(3).split()
        more = (f" (a torchvision or timm model: backbone=torchvision backbone.arch={name}; your own: "
                "backbone=custom backbone._target_=PACKAGE.MODULE.CLASS)") if group == "backbone" else ""
        return f"{group}={name} is not known; choose one of: {', '.join(options)}{more}"
    unknown = re.search(r"Could not override '([^']+)'", str(exc))
    if unknown and re.search(r"not in struct|Key '[^']+' not in '", f"{exc} {exc.__cause__}"):   # a key no config defines (Hydra would suggest `+key=`)
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


_full_errors_by_user: bool | None = None   # HYDRA_FULL_ERROR as the user set it (run_hydra sets it for Hydra)


def _wants_full_errors() -> bool:
    """HYDRA_FULL_ERROR=1 (Hydra's own switch), set by the user: config errors keep their traceback too."""
    if _full_errors_by_user is not None:
        return _full_errors_by_user
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


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
        if _wants_full_errors():
            raise
        fail(_config_error_line(exc, str(cfg.get("command", "<command>"))))
    return None


@contextlib.contextmanager
def _as_command_line(overrides: Sequence[str]) -> Iterator[None]:
    """While the body runs, `sys.argv` is `energy-ood OVERRIDES...` (a Hydra app reads its arguments there)
    and HYDRA_FULL_ERROR=1, so that Hydra raises its errors to the caller instead of printing them itself."""
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [PROG, *overrides]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


def run_hydra(command: str, overrides: Sequence[str]) -> None:
    """Run the command's Hydra app with the given overrides, as if typed on the command line. Hydra raises
    what goes wrong (see _as_command_line); a user error or a config error becomes one line here, anything
    else (a bug) keeps its traceback; HYDRA_FULL_ERROR=1 set by the user keeps every traceback."""
    import hydra

    # conf/hydra/launcher/submitit_slurm.yaml deliberately shares the SLURM plugin's config name (and is
    # checked against its schema); Hydra warns about that pattern on every run
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")
    global _full_errors_by_user
    saved, _full_errors_by_user = _full_errors_by_user, _wants_full_errors()
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=command)(_task)
    try:
        with _as_command_line(overrides):
            app()
    except UserError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - re-raised below unless it is a config error
        if _full_errors_by_user or not _is_config_error(exc):
            raise
        fail(_config_error_line(exc, command))
    finally:
        _full_errors_by_user = saved


def report_errors(command: str, func):
    """`func()`, with a config error (from composing the config before Hydra runs) as one line."""
    try:
        return func()
    except UserError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - re-raised below unless it is a config error
        if _wants_full_errors() or not _is_config_error(exc):
            raise
        fail(_config_error_line(exc, command))


def _plan_run(command: str, overrides: list[str]) -> tuple[list[str], object]:
    """Resolve resume= and plan the run folder (created, locked, checked before Hydra writes into it): the
    final overrides, and the planned folder (or None)."""
    from energy_cli.config.overrides import last_value
    from energy_cli.runs.folders import plan_run_folder, starts_a_job

    if starts_a_job(overrides) and last_value(overrides, "resume") is not None:
        from energy_cli.runs import (
            resume,  # lazy: reads checkpoints (torch); keeps --help, --cfg job and report fast
        )

        overrides = report_errors(command, lambda: resume.plan(command, overrides))
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
            console_logging()                   # (to the new stdout)
            plan = distributed.broadcast(None)
        if plan[0] == "exit":
            raise SystemExit(plan[1])
        overrides = list(plan[1])
        if not group.is_main:   # rank 0 writes .hydra/ and the run's log file
            if not sets_key(overrides, "hydra.output_subdir"):
                overrides.append("hydra.output_subdir=null")
            overrides.append("hydra/job_logging=none")
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
    from energy_cli.engine.ranks import (
        from_env,  # lazy, torch-free: keeps --help, --cfg job and report fast
    )
    from energy_cli.runs.folders import end_run_folder, stopped_message

    console_logging()
    group = from_env()
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
        console_logging()   # closes the run's log file
        end_run_folder(claimed, ok)
