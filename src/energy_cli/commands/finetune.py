"""energy-ood finetune: fine-tune a pretrained classifier with the energy-bounded loss (loss=energy) or
outlier exposure (loss=oe). Each step forwards the ID batch and the outlier batch together, so
BatchNorm sees both; writes checkpoint.pt (stage energy / oe) and train_log.csv."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from energy_cli.commands import display_path
from energy_cli import resume
from energy_cli.commands.common import (checkpoint_normalizer, find_checkpoint, load_model, model_from_checkpoint,
                                       train_and_save)
from energy_cli.data import id_shape, load_id, load_outliers
from energy_cli.engine import TrainSpec, runtime_from_config, seed_everything
from energy_cli.losses import cross_entropy, finetune_regulariser


def run(cfg: DictConfig, run_dir: Path) -> Path:
    resumed = resume.load_for_resume(cfg)
    runtime = runtime_from_config(cfg)
    seed_everything(int(cfg.seed))
    if resumed is None:
        start = find_checkpoint(cfg, stages=("pretrain",), what="train")
        model, ckpt = load_model(start, cfg, runtime)
    else:   # the weights come from the interrupted run; it records where it started from
        start = Path(resumed["extra"]["init_checkpoint"])
        model, ckpt = model_from_checkpoint(resumed, cfg, Path(str(cfg.resume)), runtime), resumed
    train, test = load_id(cfg)
    outliers = load_outliers(cfg, id_shape(cfg))
    name, weight, temperature = str(cfg.loss.name), float(cfg.loss.weight), float(cfg.temperature)
    m_in, m_out = float(cfg.m_in), float(cfg.m_out)

    def objective(logits, labels, n_in):
        reg = finetune_regulariser(name, logits[:n_in], logits[n_in:], m_in=m_in, m_out=m_out, temperature=temperature)
        return cross_entropy(logits[:n_in], labels) + weight * reg

    spec = TrainSpec(
        train=train, test=test, normalizer=checkpoint_normalizer(ckpt), objective=objective,
        epochs=int(cfg.epochs), batch_size=int(cfg.batch_size), seed=int(cfg.seed),
        crop_pad=int(cfg.dataset.augment.crop_pad), flip=bool(cfg.dataset.augment.flip),
        outliers=outliers, outlier_batch_size=int(cfg.outlier_batch_size),
        eval_batch_size=int(cfg.eval_batch_size), checkpoint_every_steps=int(cfg.checkpoint_every_steps),
        description=f"finetune ({name})",
    )
    margins = f", m_in {m_in:g}, m_out {m_out:g}, T {temperature:g}" if name == "energy" else ""
    print(f"fine-tuning {display_path(start)} with loss={name} (weight {weight:g}{margins}): {len(train)} ID + "
          f"{len(outliers)} {outliers.name} outliers, {cfg.epochs} epochs, lr {cfg.lr}, "
          f"batch {cfg.batch_size}+{cfg.outlier_batch_size}")
    extra = {"init_checkpoint": str(start.resolve()), "loss": name, "loss_weight": weight,
             "m_in": m_in, "m_out": m_out, "temperature": temperature, "outliers": outliers.name}
    return train_and_save(cfg, run_dir, model, spec, runtime, stage=name, extra=extra, resume_from=resumed,
                          backbone=ckpt["backbone"])
