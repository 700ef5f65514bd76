"""energy-ood finetune: fine-tune a pretrained classifier with the energy-bounded loss (loss=energy) or
outlier exposure (loss=oe). Each step forwards the ID batch and the outlier batch together, so
BatchNorm sees both; writes checkpoint.pt (stage energy / oe) and train_log.csv. With m_in=auto and/or
m_out=auto the margins are measured from the starting model first (margins.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from energy_cli.commands.checkpoints import (
    checkpoint_normalizer,
    find_checkpoint,
    load_model,
    model_from_checkpoint,
)
from energy_cli.commands.outcome import Outcome
from energy_cli.commands.settings import data_settings, runtime_from_config
from energy_cli.commands.training import train_and_save
from energy_cli.commands.tuning import validation_sets
from energy_cli.config.values import Margins
from energy_cli.data import load_id, load_outliers, resolve_ood_names
from energy_cli.data.batches import Normalizer
from energy_cli.data.images import ImageSet
from energy_cli.detectors.logit import LogitDetector
from energy_cli.detectors.scoring import score_images
from energy_cli.engine import distributed
from energy_cli.engine.inference import measure_energies
from energy_cli.engine.loop import TrainSpec
from energy_cli.engine.runtime import Runtime
from energy_cli.engine.seeding import mix_seed, seed_everything
from energy_cli.errors import UserError
from energy_cli.fileio import atomic_write_bytes
from energy_cli.ood import margins as ood_margins
from energy_cli.ood.losses import cross_entropy, finetune_regulariser
from energy_cli.ood.metrics import fpr_at_tpr
from energy_cli.runs import resume
from energy_cli.runs.folders import display_path

log = logging.getLogger(__name__)


def resolve_auto_margins(cfg: DictConfig, given: Margins, run_dir: Path, model, train: ImageSet, outliers: ImageSet,
                         normalizer: Normalizer, runtime: Runtime, start: Path) -> tuple[float, float, dict[str, Any]]:
    """m_in / m_out as configured, `auto` ones measured from the starting model (margins.auto_margins);
    logs the measurement and writes margins.json into the run folder."""
    given_in, given_out = given.m_in, given.m_out
    temperature, batch = float(cfg.temperature), runtime.eval_batch_size
    e_in = measure_energies(model, train, normalizer, runtime, temperature, batch, mix_seed(int(cfg.seed), 11))
    e_out = measure_energies(model, outliers, normalizer, runtime, temperature, batch, mix_seed(int(cfg.seed), 12))
    auto_in, auto_out = ood_margins.auto_margins(e_in, e_out)
    m_in, m_out = given.with_measured(auto_in, auto_out)
    stats_in, stats_out = ood_margins.energy_summary(e_in), ood_margins.energy_summary(e_out)
    log.info(f"auto margins from {display_path(start)} at T={temperature:g}: ID train energies mean "
             f"{stats_in['mean']:.2f} (5%..95% {stats_in['p5']:.2f}..{stats_in['p95']:.2f}, n={stats_in['n']}); "
             f"{outliers.name} energies mean {stats_out['mean']:.2f} (5%..95% {stats_out['p5']:.2f}.."
             f"{stats_out['p95']:.2f}, n={stats_out['n']})")
    log.info(f"  -> m_in = {m_in:g} ({'auto: mean ID energy' if given_in is None else 'given'}), "
             f"m_out = {m_out:g} ({f'auto: {ood_margins.AUTO_OUT_PERCENTILE:g}th percentile of the outlier energies' if given_out is None else 'given'})")
    record = {
        "m_in": m_in, "m_out": m_out, "m_in_auto": given_in is None, "m_out_auto": given_out is None,
        "rule": f"m_in = mean ID training energy, m_out = {ood_margins.AUTO_OUT_PERCENTILE:g}th percentile of the outlier "
                "energies, of the starting model in eval mode, rounded to 0.01",
        "temperature": temperature, "start_checkpoint": str(start.resolve()), "outliers": outliers.name,
        "id_energy": stats_in, "outlier_energy": stats_out,
    }
    atomic_write_bytes(run_dir / "margins.json", (json.dumps(record, indent=2) + "\n").encode())
    if not m_in < m_out:
        how = {True: "auto", False: "given"}
        raise UserError(f"m_in={m_in:g} ({how[given_in is None]}) is not below m_out={m_out:g} "
                        f"({how[given_out is None]}); the measured energies are in {display_path(run_dir / 'margins.json')}: "
                        "choose margins with m_in < m_out by hand")
    return m_in, m_out, record


def validation_energy_fpr95(cfg: DictConfig, checkpoint: Path, train: ImageSet, test: ImageSet,
                            runtime: Runtime) -> float:
    """The energy score's FPR95 (percent) of the fine-tuned checkpoint: the ID test set against each validation
    OOD set (`validation_ood`, as eval's tuning builds them; never an OOD test set of the dataset), averaged."""
    model, ckpt = load_model(checkpoint, cfg, runtime, for_inference=True)
    normalizer = checkpoint_normalizer(ckpt)
    energy = [LogitDetector("energy", float(cfg.temperature))]
    batch = runtime.eval_batch_size
    sets = validation_sets(cfg, train, data_settings(cfg).shape, resolve_ood_names(None, cfg.dataset))
    id_scores = score_images(model, test.images, energy, normalizer, runtime, batch)[1]["energy"].numpy()
    fprs = {s.name: 100 * fpr_at_tpr(id_scores, score_images(model, s.images, energy, normalizer, runtime,
                                                             batch)[1]["energy"].numpy()) for s in sets}
    cells = ", ".join(f"{name} {value:.2f}%" for name, value in fprs.items())
    log.info(f"validation energy FPR95 (ID test vs {len(sets)} validation OOD sets): {cells}")
    return float(np.mean(list(fprs.values())))


def run(cfg: DictConfig, run_dir: Path, margins: Margins | None) -> Outcome:
    """Fine-tune; `margins` (loss=energy; None for loss=oe) as validation parsed them from m_in / m_out."""
    resumed = resume.load_for_resume(cfg)
    runtime = runtime_from_config(cfg)
    seed_everything(int(cfg.seed))
    if resumed is None:
        start = find_checkpoint(cfg, stages=("pretrain",), what="train")
        model, ckpt = load_model(start, cfg, runtime)
    else:   # the weights come from the interrupted run; it records where it started from
        start = Path(resumed["extra"]["init_checkpoint"])
        model, ckpt = model_from_checkpoint(resumed, cfg, Path(str(cfg.resume)), runtime), resumed
    normalizer = checkpoint_normalizer(ckpt)
    data = data_settings(cfg)
    train, test = load_id(data)
    outliers = load_outliers(data, data.shape)
    name, weight, temperature = str(cfg.loss.name), float(cfg.loss.weight), float(cfg.temperature)
    extra: dict[str, Any] = {"init_checkpoint": str(start.resolve()), "loss": name, "loss_weight": weight,
                             "temperature": temperature, "outliers": outliers.name}
    m_in = m_out = 0.0
    if name == "energy":
        assert margins is not None, "validate() parses the margins of loss=energy"
        if resumed is not None and margins.any_auto:
            # auto margins were measured on the starting model when the run began; keep them
            m_in, m_out = float(resumed["extra"]["m_in"]), float(resumed["extra"]["m_out"])
            extra["auto_margins"] = resumed["extra"].get("auto_margins")
        elif margins.any_auto:
            m_in, m_out, record = resolve_auto_margins(cfg, margins, run_dir, model, train, outliers, normalizer,
                                                       runtime, start)
            extra["auto_margins"] = record
        else:
            m_in, m_out = margins.m_in, margins.m_out  # type: ignore[assignment]
        extra.update(m_in=m_in, m_out=m_out)
    else:
        extra.update(m_in=cfg.m_in, m_out=cfg.m_out)

    def objective(logits, labels, n_in):
        reg = finetune_regulariser(name, logits[:n_in], logits[n_in:], m_in=m_in, m_out=m_out, temperature=temperature)
        return cross_entropy(logits[:n_in], labels) + weight * reg

    spec = TrainSpec(
        train=train, test=test, normalizer=normalizer, objective=objective,
        epochs=int(cfg.epochs), batch_size=int(cfg.batch_size), seed=int(cfg.seed),
        crop_pad=int(cfg.dataset.augment.crop_pad), flip=bool(cfg.dataset.augment.flip),
        outliers=outliers, outlier_batch_size=int(cfg.outlier_batch_size),
        eval_batch_size=runtime.eval_batch_size, checkpoint_every_steps=int(cfg.checkpoint_every_steps),
        description=f"finetune ({name})",
    )
    shown = f", m_in {m_in:g}, m_out {m_out:g}, T {temperature:g}" if name == "energy" else ""
    log.info(f"fine-tuning {display_path(start)} with loss={name} (weight {weight:g}{shown}): {len(train)} ID + "
             f"{len(outliers)} {outliers.name} outliers, {cfg.epochs} epochs, lr {cfg.lr}, "
             f"batch {cfg.batch_size}+{cfg.outlier_batch_size}")
    outcome = train_and_save(cfg, run_dir, model, spec, runtime, stage=name, extra=extra, resume_from=resumed,
                             backbone=ckpt["backbone"])
    if str(cfg.get("metric", "test_acc")) == "val_energy_fpr95" and distributed.current().is_main:
        fpr = validation_energy_fpr95(cfg, outcome.value, train, test, runtime)
        return Outcome(outcome.value, fpr, "val_energy_fpr95")
    return outcome
