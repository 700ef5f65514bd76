"""The commands. Each is one thin module with `run(cfg, run_dir, **checked)` that assembles data, model,
engine and outputs; `checked` holds the typed values validation parsed (finetune: `margins`).
`run_command` is the Hydra task function's body."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from omegaconf import OmegaConf

from energy_cli.commands.outcome import FINISHED, Finished, Outcome
from energy_cli.commands.validate import validate
from energy_cli.engine.ranks import from_env
from energy_cli.errors import UserError
from energy_cli.runs.folders import display_path, earlier_outputs

log = logging.getLogger(__name__)

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

    if cfg.get("resume") not in (None, False) or cfg.get("overwrite") or not from_env().is_main:
        return   # (under torchrun rank 0 checks; the others may already see its first files)
    found = earlier_outputs(run_dir)
    if found:
        raise UserError(f"the run folder {display_path(run_dir)} already holds {found[0].name} from an earlier run; "
                        "choose another hydra.run.dir, resume that run with resume=PATH, or add overwrite=true")


def run_command(cfg) -> float | None:
    """The command in its run folder, which it holds locked (the command line locked it already, except for
    a folder Hydra resolves itself and a sweep's job folders; under torchrun rank 0 holds it). Returns the
    command's headline metric (commands.outcome), the value Hydra sweepers optimise; records the run in
    outcome.FINISHED."""
    import contextlib

    from hydra.core.hydra_config import HydraConfig

    from energy_cli.runs.locks import run_lock

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info(f"energy-ood {cfg.command}: run folder {display_path(run_dir)}")
    lock = run_lock(run_dir) if from_env().is_main else contextlib.nullcontext()
    with lock:
        checked = validate(cfg)
        if cfg.command != "report":   # report reads no dataset (and must not import torch)
            from energy_cli.data import class_count

            # the one place dataset.num_classes=auto is resolved (from dataset=folder's class folders)
            cfg.dataset.num_classes = class_count(OmegaConf.to_container(cfg.dataset, resolve=True))
        refuse_to_overwrite(cfg, run_dir)
        module = importlib.import_module(COMMAND_MODULES[cfg.command])
        outcome = module.run(cfg, run_dir, **checked)
    if not isinstance(outcome, Outcome):
        outcome = Outcome(outcome)
    FINISHED.append(Finished(str(cfg.command), run_dir, outcome))
    if outcome.metric is not None:
        log.info(f"headline metric: {outcome.metric_name} = {outcome.metric:.6g}")
    return outcome.metric


__all__ = ["COMMAND_MODULES", "display_path", "run_command"]
