"""energy-ood train: pretrain a classifier with cross-entropy; writes checkpoint.pt and train_log.csv."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from energy_cli.commands.outcome import Outcome
from energy_cli.commands.settings import data_settings, runtime_from_config
from energy_cli.commands.training import train_and_save
from energy_cli.data import load_id, normalizer_stats
from energy_cli.data.batches import Normalizer
from energy_cli.engine.loop import TrainSpec
from energy_cli.engine.seeding import seed_everything
from energy_cli.models import backbone_label, build_model
from energy_cli.ood.losses import cross_entropy
from energy_cli.runs import resume

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path) -> Outcome:
    resumed = resume.load_for_resume(cfg)
    runtime = runtime_from_config(cfg)
    seed_everything(int(cfg.seed))
    data = data_settings(cfg)
    train, test = load_id(data)
    if resumed is not None:   # a resumed run keeps the normalisation it started with (measured or given)
        normalizer = Normalizer(resumed["mean"], resumed["std"])
    else:
        mean, std, how = normalizer_stats(data, train)
        normalizer = Normalizer(mean, std)
        if how != "given":
            log.info(f"normalisation {how}: mean {[round(m, 4) for m in mean]}, std {[round(s, 4) for s in std]} "
                     "(stored in the checkpoint)")
    model = build_model(cfg.backbone, int(cfg.dataset.num_classes), int(cfg.dataset.channels),
                        int(cfg.dataset.image_size), download=bool(cfg.download))
    spec = TrainSpec(
        train=train, test=test, normalizer=normalizer,
        objective=lambda logits, labels, n_in: cross_entropy(logits, labels),
        epochs=int(cfg.epochs), batch_size=int(cfg.batch_size), seed=int(cfg.seed),
        crop_pad=int(cfg.dataset.augment.crop_pad), flip=bool(cfg.dataset.augment.flip),
        eval_batch_size=runtime.eval_batch_size, checkpoint_every_steps=int(cfg.checkpoint_every_steps),
        description="train",
    )
    log.info(f"training {backbone_label(cfg.backbone)} on {cfg.dataset.name}: {len(train)} train / {len(test)} test images, "
             f"{cfg.epochs} epochs, lr {cfg.lr}, batch {cfg.batch_size}, {runtime.device.type} {runtime.precision}")
    return train_and_save(cfg, run_dir, model, spec, runtime, stage="pretrain", resume_from=resumed)
