"""The commands. Each is one thin module with `run(cfg, run_dir)` that assembles data, model, engine
and outputs; `run_command` is the Hydra task function's body."""

from __future__ import annotations

import importlib
from pathlib import Path

from energy_cli.runs.folders import display_path

COMMAND_MODULES = {
    "train": "energy_cli.commands.train",
    "finetune": "energy_cli.commands.finetune",
    "eval": "energy_cli.commands.evaluate",
    "report": "energy_cli.commands.report",
    "score": "energy_cli.commands.score",
}


def refuse_to_overwrite(cfg, run_dir: Path) -> None:
    """A run never overwrites what an earlier run wrote (a `hydra.run.dir=` that is already used), unless
    the user says overwrite=true; a resumed run continues in its own folder."""
    from energy_cli.engine import distributed
    from energy_cli.errors import UserError
    from energy_cli.runs.folders import earlier_outputs

    if cfg.get("resume") not in (None, False) or cfg.get("overwrite") or not distributed.current().is_main:
        return   # (under torchrun rank 0 checks; the others may already see its first files)
    found = earlier_outputs(run_dir)
    if found:
        raise UserError(f"the run folder {display_path(run_dir)} already holds {found[0].name} from an earlier run; "
                        "choose another hydra.run.dir, resume that run with resume=PATH, or add overwrite=true")


def run_command(cfg) -> object:
    """The command in its run folder, which it holds locked (the command line locked it already, except for
    a folder Hydra resolves itself and a sweep's job folders; under torchrun rank 0 holds it)."""
    import contextlib

    from hydra.core.hydra_config import HydraConfig

    from energy_cli.commands.validate import validate
    from energy_cli.engine import distributed
    from energy_cli.runs.locks import run_lock

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    print(f"energy-ood {cfg.command}: run folder {display_path(run_dir)}", flush=True)
    lock = run_lock(run_dir) if distributed.current().is_main else contextlib.nullcontext()
    with lock:
        validate(cfg)
        refuse_to_overwrite(cfg, run_dir)
        module = importlib.import_module(COMMAND_MODULES[cfg.command])
        return module.run(cfg, run_dir)


__all__ = ["COMMAND_MODULES", "display_path", "run_command"]
