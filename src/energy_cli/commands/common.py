"""Pieces the commands share: finding and loading checkpoints into models, and one training run
(optimiser, schedule, loop, checkpoint.pt and train_log.csv after every epoch, resuming, stopping on a signal)."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from energy_cli import checkpoint as ckpt_io
from energy_cli import distributed, resume
from energy_cli.commands import display_path
from energy_cli.data.batches import Normalizer
from energy_cli.engine import (LoopState, NonFiniteLoss, Runtime, TrainSpec, fit, make_optimizer, make_scheduler,
                               prepare_model, rng_state, set_rng_state, steps_per_epoch)
from energy_cli.errors import Interrupted, UserError
from energy_cli.models import Classifier, build_model
from energy_cli.results import write_train_log
from energy_cli.runs import search_roots

STAGES = ("pretrain", "energy", "oe")


def dataset_normalizer(cfg: DictConfig) -> Normalizer:
    return Normalizer(cfg.dataset.mean, cfg.dataset.std)


def checkpoint_normalizer(ckpt: dict[str, Any]) -> Normalizer:
    return Normalizer(ckpt["mean"], ckpt["std"])


def find_checkpoint(cfg: DictConfig, stages: Iterable[str], what: str) -> Path:
    """`ckpt=` when given, else the newest finished run of this dataset and backbone in one of `stages`."""
    if cfg.get("ckpt"):
        return Path(str(cfg.ckpt)).expanduser()
    stages = tuple(stages)
    dataset, backbone = cfg.dataset.name, cfg.backbone.name

    def matches(c: dict[str, Any]) -> bool:
        return (c.get("dataset") == dataset and c.get("backbone", {}).get("name") == backbone
                and c.get("stage") in stages and bool(c.get("finished")))

    found = ckpt_io.find_newest(search_roots(), matches)
    if found is None:
        raise UserError(f"no finished {what} run of dataset={dataset} backbone={backbone} under outputs/ or "
                        f"multirun/ here; run `energy-ood train dataset={dataset} backbone={backbone}` first "
                        "or pass ckpt=PATH")
    return found


HEADER_KEYS = ("dataset", "backbone", "num_classes", "in_channels", "image_size", "mean", "std", "stage")


def check_compatible(ckpt: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    """The checkpoint must have been trained on this dataset (classes, channels, size) with this backbone
    (its name, and any backbone.* option given on the command line; other options come from the checkpoint)."""
    missing = [k for k in HEADER_KEYS if k not in ckpt] or ([] if isinstance(ckpt["backbone"], dict) else ["backbone"])
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: it was not written by energy-ood train or finetune")
    d = cfg.dataset
    if ckpt.get("dataset") != d.name:
        raise UserError(f"{path} was trained on dataset={ckpt.get('dataset')}, not {d.name}; "
                        f"add dataset={ckpt.get('dataset')}")
    if ckpt["backbone"].get("name") != cfg.backbone.name:
        raise UserError(f"{path} holds backbone={ckpt['backbone'].get('name')}, not {cfg.backbone.name}; "
                        f"add backbone={ckpt['backbone'].get('name')}")
    wanted = OmegaConf.to_container(cfg.backbone, resolve=True)
    typed = {o.split("=", 1)[0].lstrip("+~").split(".", 1)[1] for o in task_overrides()
             if o.lstrip("+~").startswith("backbone.")}
    for key in sorted(set(wanted) & set(ckpt["backbone"]) & typed):   # options the user asked for
        if wanted[key] != ckpt["backbone"][key]:
            raise UserError(f"{path} holds a {cfg.backbone.name} with backbone.{key}={ckpt['backbone'][key]}, "
                            f"not {wanted[key]}; add backbone.{key}={ckpt['backbone'][key]} or drop that override")
    shape = (ckpt.get("num_classes"), ckpt.get("in_channels"), ckpt.get("image_size"))
    want = (int(d.num_classes), int(d.channels), int(d.image_size))
    if shape != want:
        raise UserError(f"{path} expects {shape[0]} classes and {shape[1]}x{shape[2]}x{shape[2]} images, but "
                        f"dataset={d.name} has {want[0]} classes and {want[1]}x{want[2]}x{want[2]} images")


def load_model(path: Path, cfg: DictConfig, runtime: Runtime) -> tuple[Classifier, dict[str, Any]]:
    """Load a checkpoint, check it fits the config, rebuild its model on the device."""
    ckpt = ckpt_io.load_checkpoint(path)
    model = model_from_checkpoint(ckpt, cfg, path, runtime)
    if "finished" in ckpt and not ckpt["finished"]:
        print(f"note: {display_path(path)} is an interrupted run (epoch {ckpt.get('epoch')} of "
              f"{(ckpt.get('config') or {}).get('epochs', '?')}); using it as it is")
    return model, ckpt


def model_from_checkpoint(ckpt: dict[str, Any], cfg: DictConfig, path: Path, runtime: Runtime) -> Classifier:
    """The model a loaded checkpoint holds, after checking that it fits the config."""
    check_compatible(ckpt, cfg, path)
    model = build_model(ckpt["backbone"], ckpt["num_classes"], ckpt["in_channels"])
    try:
        model.load_state_dict(ckpt_io.strip_module_prefix(ckpt["model"]))
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path} does not fit backbone {ckpt['backbone'].get('name')}: {first}") from None
    shape = (ckpt["in_channels"], ckpt["image_size"], ckpt["image_size"])
    return prepare_model(model, runtime, shape)


def task_overrides() -> list[str]:
    """The overrides this run was started with (Hydra's record), or [] outside a Hydra run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except (ImportError, ValueError):
        return []


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def train_and_save(cfg: DictConfig, run_dir: Path, model: Classifier, spec: TrainSpec, runtime: Runtime,
                   stage: str, extra: dict[str, Any] | None = None,
                   resume_from: dict[str, Any] | None = None, backbone: dict[str, Any] | None = None) -> Path:
    """Run the training loop and keep checkpoint.pt and train_log.csv current after every epoch (and every
    `checkpoint_every_steps` steps); with `resume_from` (a checkpoint of this run) continue where it
    stopped. SIGINT / SIGTERM save the current step and raise Interrupted; a loss that stops being finite
    raises a UserError and leaves the last good checkpoint in place. `backbone` is the model's backbone
    config when it did not come from `cfg.backbone` (fine-tuning: the starting checkpoint's).

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
    overrides = [o for o in task_overrides() if not o.startswith("resume=")]
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
        state = resume.restore(resume_from, model, optimizer, scheduler)
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

    lock = resume.run_lock(run_dir) if group.is_main else contextlib.nullcontext()
    with lock, resume.StopOnSignal() as stop:
        if group.is_main:
            ckpt_io.remove_stale_temporaries(run_dir)   # left by a process killed in the middle of a write
        if resume_from is not None:
            set_rng_state(resume_from["rng"])
            print(f"resuming {display_path(ckpt_path)} at epoch {state.epoch + 1}, step {state.step}")
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
        print(f"weights identical on all {group.world_size} ranks")
    last = state.history[-1] if state.history else None
    summary = f"test accuracy {100 * last['test_acc']:.2f}%" if last else "0 epochs: weights unchanged"
    print(f"{stage}: {summary} after {state.epoch} epochs on {runtime.device.type} ({runtime.precision}); "
          f"wrote {display_path(ckpt_path)} and {display_path(log_path)}")
    return ckpt_path

