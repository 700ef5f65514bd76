"""One training run, shared by train and finetune: optimiser, schedule, loop, checkpoint.pt and train_log.csv
after every epoch, resuming, stopping on a signal."""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from energy_cli.commands.checkpoints import task_overrides
from energy_cli.commands.outcome import Outcome
from energy_cli.config.overrides import key_of
from energy_cli.engine import distributed
from energy_cli.engine.loop import (
    LoopState,
    NonFiniteLoss,
    TrainSpec,
    fit,
    make_optimizer,
    make_scheduler,
    steps_per_epoch,
)
from energy_cli.engine.runtime import Runtime, prepare_model
from energy_cli.engine.seeding import rng_state, set_rng_state
from energy_cli.errors import Interrupted, UserError
from energy_cli.fileio import remove_stale_temporaries
from energy_cli.models import Classifier
from energy_cli.runs import checkpoint as ckpt_io
from energy_cli.runs import resume
from energy_cli.runs.folders import display_path
from energy_cli.runs.locks import run_lock
from energy_cli.runs.outputs import write_train_log
from energy_cli.runs.signals import StopOnSignal

log = logging.getLogger(__name__)


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def train_and_save(cfg: DictConfig, run_dir: Path, model: Classifier, spec: TrainSpec, runtime: Runtime,
                   stage: str, extra: dict[str, Any] | None = None,
                   resume_from: dict[str, Any] | None = None, backbone: dict[str, Any] | None = None) -> Outcome:
    """Run the training loop and keep checkpoint.pt and train_log.csv current after every epoch (and every
    `checkpoint_every_steps` steps); with `resume_from` (a checkpoint of this run) continue where it
    stopped. SIGINT / SIGTERM save the current step and raise Interrupted; a loss that stops being finite
    raises a UserError and leaves the last good checkpoint in place. `backbone` is the model's backbone
    config when it did not come from `cfg.backbone` (fine-tuning: the starting checkpoint's). Returns the
    checkpoint path with the final test accuracy (a fraction) as the headline metric.

    Under torchrun every rank trains (engine.fit wraps the model in DistributedDataParallel) and only rank 0
    writes; at the end the ranks compare checksums of their weights."""
    group = distributed.current()
    if group.enabled and cfg.get("sync_bn", False):
        if runtime.device.type != "cuda":
            raise UserError("sync_bn=true needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on CPUs); drop it")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = prepare_model(model, runtime, spec.train.shape)
    optimizer = make_optimizer(model, float(cfg.lr), float(cfg.momentum), float(cfg.weight_decay), bool(cfg.nesterov))
    total_steps = int(cfg.epochs) * steps_per_epoch(len(spec.train), spec.batch_size)
    scheduler = make_scheduler(optimizer, total_steps, float(cfg.lr))
    ckpt_path, log_path = run_dir / ckpt_io.FILENAME, run_dir / "train_log.csv"
    overrides = [o for o in task_overrides() if key_of(o) != "resume"]
    header = {
        "dataset": cfg.dataset.name,
        "backbone": dict(backbone) if backbone is not None else OmegaConf.to_container(cfg.backbone, resolve=True),
        "num_classes": int(cfg.dataset.num_classes),
        "in_channels": int(cfg.dataset.channels),
        "image_size": int(cfg.dataset.image_size),
        "mean": list(spec.normalizer.mean_list),
        "std": list(spec.normalizer.std_list),
        "stage": stage,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "overrides": overrides,
        "resumes": [],
        "extra": dict(extra or {}),
    }
    state = LoopState()
    if resume_from is not None:
        state = restore(resume_from, model, optimizer, scheduler)
        header["resumes"] = [*resume_from.get("resumes", []),
                             {"epoch": state.epoch, "step": state.step, "overrides": overrides}]
    saved = {"step": None if resume_from is None else state.step}

    def save(state: LoopState, finished: bool = False) -> None:
        if not _all_finite(model):
            raise NonFiniteLoss(float("nan"), state.epoch + (0 if state.batch == 0 else 1), state.step)
        if not group.is_main:
            saved["step"] = state.step
            return
        ckpt_io.save_checkpoint(ckpt_path, {
            **header,
            "model": ckpt_io.strip_module_prefix(model.state_dict()),
            "epoch": state.epoch,
            "step": state.step,
            "finished": finished,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "loop": state.to_dict(),
        })
        write_train_log(log_path, state.history)
        saved["step"] = state.step

    lock = run_lock(run_dir) if group.is_main else contextlib.nullcontext()
    with lock, StopOnSignal() as stop:
        if group.is_main:
            remove_stale_temporaries(run_dir)   # left by a process killed in the middle of a write
        if resume_from is not None:
            set_rng_state(resume_from["rng"])
            log.info(f"resuming {display_path(ckpt_path)} at epoch {state.epoch + 1}, step {state.step}")
        try:
            state = fit(model, spec, runtime, optimizer, scheduler, state, save, stop_requested=stop.requested)
        except NonFiniteLoss as exc:
            if saved["step"] is not None:
                kept = f"the last good checkpoint, {display_path(ckpt_path)} (step {saved['step']}), stays"
            else:
                kept = "no checkpoint was saved"
            raise UserError(f"{exc}; {kept}") from None
        if state.epoch < spec.epochs:
            name = signal.Signals(stop.signum).name if stop.signum else "a signal"
            raise Interrupted(f"stopped by {name} in epoch {state.epoch + 1} at step {state.step}; saved "
                              f"{display_path(ckpt_path)}; resume with: {resume.resume_command(cfg.command, ckpt_path)}",
                              128 + (stop.signum or 15))
        save(state, finished=True)
    if group.enabled:
        if not distributed.check_identical_weights(model):
            raise RuntimeError("the ranks ended with different weights: a bug in the distributed training path")
        log.info(f"weights identical on all {group.world_size} ranks")
    last = state.history[-1] if state.history else None
    summary = f"test accuracy {100 * last['test_acc']:.2f}%" if last else "0 epochs: weights unchanged"
    log.info(f"{stage}: {summary} after {state.epoch} epochs on {runtime.device.type} ({runtime.precision}"
             f"{', Winograd convolutions' if runtime.winograd_train else ''}); "
             f"wrote {display_path(ckpt_path)} and {display_path(log_path)}")
    return Outcome(ckpt_path, float(last["test_acc"]) if last else None, "test_acc")


def restore(ckpt: dict[str, Any], model: Any, optimizer: Any, scheduler: Any) -> LoopState:
    """Put weights, optimiser and scheduler state back; return the loop position."""
    model.load_state_dict(ckpt_io.strip_module_prefix(ckpt["model"]))
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    return LoopState.from_dict(ckpt["loop"])
