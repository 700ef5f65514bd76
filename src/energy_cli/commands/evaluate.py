"""energy-ood eval: score the ID test set and each OOD set once, compute the metrics over `num_to_avg`
draws of `ood_samples` OOD scores per set, write results.csv (and scores.npz), print the table; store the
deployment thresholds (thresholds.json, here and next to the checkpoint) and, with plots=true, draw the
score histograms and ROC curves.

Every score is a detector (detectors/); detectors with a fit are fitted on the ID training set once per
checkpoint: Mahalanobis's fit is cached in `mahalanobis.pt` next to the checkpoint, the training features that
react, dice, knn and vim fit on in `train_features.pt`."""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from energy_cli.commands.checkpoints import (
    STAGES,
    checkpoint_normalizer,
    find_checkpoint,
    load_model,
)
from energy_cli.commands.outcome import Outcome, eval_headline
from energy_cli.commands.settings import data_settings, runtime_from_config
from energy_cli.commands.tuning import tune_detectors
from energy_cli.data import load_id, load_ood_parts, resolve_ood_names
from energy_cli.data.batches import Normalizer
from energy_cli.data.images import ImageSet
from energy_cli.detectors import EXTENDED_NAMES, build_detectors, resolve_score_names
from energy_cli.detectors.base import Detector, FeatureFitDetector
from energy_cli.detectors.scoring import score_images
from energy_cli.engine.inference import accuracy, device_batches, predict
from energy_cli.engine.quantize import CALIBRATION_IMAGES, quantize_int8
from energy_cli.engine.runtime import Runtime
from energy_cli.engine.seeding import mix_seed, seed_everything
from energy_cli.errors import UserError
from energy_cli.fileio import file_part
from energy_cli.models import backbone_label
from energy_cli.models.base import Classifier
from energy_cli.ood.metrics import (
    METRIC_NAMES,
    acceptance_rate,
    auroc,
    draw_indices,
    fpr_at_tpr,
    metrics_over_draws,
    roc_points,
    threshold_at_tpr,
)
from energy_cli.runs import checkpoint as ckpt_io
from energy_cli.runs.folders import display_path
from energy_cli.runs.outputs import format_table, write_results, write_scores
from energy_cli.runs.thresholds import FILENAME as THRESHOLDS_FILE
from energy_cli.runs.thresholds import INT8_FILENAME as INT8_THRESHOLDS_FILE
from energy_cli.runs.thresholds import (
    TPR,
    merge_beside_checkpoint,
    thresholds_document,
    write_thresholds,
)

log = logging.getLogger(__name__)


def fit_key(checkpoint_sha256: str, train: ImageSet, runtime: Runtime) -> str:
    """What a Mahalanobis fit depends on: the checkpoint's bytes (the sha256 of the bytes that were loaded,
    never of the file read again), the training images and labels, and the precision of the forward passes.
    A cache written under another key is refitted. A training set streamed from disk stands in by its files
    (paths, sizes, modification times: LazyImages.fingerprint) instead of its pixels' bytes."""
    h = hashlib.sha256(b"mahalanobis/1")
    h.update(checkpoint_sha256.encode())
    if train.streamed:
        h.update(train.images.fingerprint().encode())
    else:
        h.update(train.images.contiguous().numpy().tobytes())
    if train.labels is not None:
        h.update(train.labels.long().contiguous().numpy().tobytes())
    h.update(runtime.precision.encode())
    return h.hexdigest()


TRAIN_FEATURES = "train_features.pt"   # penultimate features of the ID training set, next to the checkpoint


def train_features(det: FeatureFitDetector, train: ImageSet, ckpt_path: Path | None, key: str,
                   checkpoint_sha256: str) -> torch.Tensor:
    """The penultimate features (N, D) of the ID training set under the checkpoint, from the cache next to it
    (train_features.pt, keyed like the Mahalanobis fit) or from one eval-mode pass, then cached (not with
    ckpt_path=None: a model without a checkpoint file)."""
    if ckpt_path is None:
        return predict(det.model, train.images, det.normalizer, det.runtime, det.batch_size, features=True)[1]
    cache = ckpt_path.parent / TRAIN_FEATURES
    state = ckpt_io.load_fit_cache(cache, key)
    if state is not None and isinstance(state.get("features"), torch.Tensor) and len(state["features"]) == len(train):
        log.info(f"reusing the training features cached in {display_path(cache)}")
        return state["features"]
    _, feats = predict(det.model, train.images, det.normalizer, det.runtime, det.batch_size, features=True)
    try:
        ckpt_io.save_fit_cache(cache, key, {"features": feats}, checkpoint_sha256)
        note = f"cached in {display_path(cache)}"
    except OSError as exc:
        note = f"kept in memory only: cannot write {display_path(cache)}: {exc.strerror or exc}"
    log.info(f"extracted the penultimate features of {len(train)} {train.name} training images ({note})")
    return feats


def fit_detectors(detectors: list[Detector], train: ImageSet, ckpt_path: Path | None, checkpoint_sha256: str,
                  runtime: Runtime) -> None:
    """Fit the detectors that need it on the ID training set, once per checkpoint. Mahalanobis's fit is
    cached next to the checkpoint as mahalanobis.pt; react, dice, knn and vim fit from the training features,
    extracted once for all of them and cached as train_features.pt (so a sweep over their settings refits in
    a moment). Caches are keyed by fit_key and reused while the key matches; when that folder is not writable
    they are kept in memory only. With ckpt_path=None (a model without a checkpoint file: the Python API)
    nothing is cached."""
    if not any(det.needs_fit for det in detectors):
        return
    key = "" if ckpt_path is None else fit_key(checkpoint_sha256, train, runtime)
    feature_fits = [det for det in detectors if isinstance(det, FeatureFitDetector)]
    if feature_fits:
        feats = train_features(feature_fits[0], train, ckpt_path, key, checkpoint_sha256)
        for det in feature_fits:
            det.fit_features(feats, train.labels)
    for det in detectors:
        if not det.needs_fit or isinstance(det, FeatureFitDetector):
            continue
        if ckpt_path is None:
            det.fit(train)
            continue
        cache = ckpt_path.parent / f"{det.name}.pt"
        state = ckpt_io.load_fit_cache(cache, key)
        if state is not None:
            det.load_state_dict(state)
            log.info(f"{det.name}: reusing the fit cached in {display_path(cache)}")
            continue
        det.fit(train)
        try:
            ckpt_io.save_fit_cache(cache, key, det.state_dict(), checkpoint_sha256)
            note = f"cached in {display_path(cache)}"
        except OSError as exc:
            note = f"kept in memory only: cannot write {display_path(cache)}: {exc.strerror or exc}"
        log.info(f"{det.name}: fitted on {len(train)} {train.name} training images ({note})")


def check_finite(scores: dict[str, dict[str, np.ndarray]]) -> None:
    """Every score of every set is a finite number: otherwise one line naming the first that is not."""
    for name, per in scores.items():
        for score, values in per.items():
            bad = int(np.size(values) - np.isfinite(values).sum())
            if bad:
                raise UserError(f"{bad} of the {np.size(values)} {score} scores of {name} are NaN or infinite: the "
                                "model's outputs overflow (check the checkpoint, and the temperature settings)")


def metric_rows(scores: dict[str, dict[str, np.ndarray]], score_names: list[str], ood_names: list[str],
                num_to_avg: int, ood_samples: int | None, seed: int, base: dict[str, Any],
                temperatures: dict[str, float | None] | None = None) -> list[dict[str, Any]]:
    """One row per (score, OOD set) plus an `average` row per score, metrics in percent.

    `temperatures` gives each score's `temperature` column (None = the score has no temperature: empty cell);
    scores not in it take base["temperature"].

    Each OOD set gets `num_to_avg` seeded draws of `ood_samples` scores (the same draws for every score);
    the ID scores are used in full. A row holds the mean over draws (and the std when num_to_avg > 1);
    the average row averages the sets within each draw, then takes mean and std over the draws.
    """
    temperatures = temperatures or {}
    rows = []
    draws = {name: draw_indices(len(scores[name][score_names[0]]), ood_samples, num_to_avg,
                                mix_seed(seed, zlib.crc32(name.encode()))) for name in ood_names}
    for score in score_names:
        per_set = {name: metrics_over_draws(scores["id"][score], scores[name][score], draws[name]) for name in ood_names}
        blocks = [(name, per_set[name], len(draws[name][0])) for name in ood_names]
        average = {m: np.mean([per_set[name][m] for name in ood_names], axis=0) for m in METRIC_NAMES}
        blocks.append(("average", average, sum(len(draws[name][0]) for name in ood_names)))
        for name, values, n_ood in blocks:
            row = {**base, "score": score, "temperature": temperatures.get(score, base.get("temperature")),
                   "ood": name, "n_ood": n_ood}
            for m in METRIC_NAMES:
                row[m] = 100 * float(np.mean(values[m]))
                if num_to_avg > 1:
                    row[f"{m}_std"] = 100 * float(np.std(values[m]))
            rows.append(row)
    return rows


def store_thresholds(id_scores: dict[str, np.ndarray], temperatures: dict[str, float | None], header: dict[str, Any],
                     run_dir: Path, ckpt_path: Path, beside_name: str = THRESHOLDS_FILE) -> dict[str, tuple[float, float]]:
    """Per score, the threshold at 95% ID TPR on the ID test scores -> thresholds.json in the run folder and
    (merged under a lock with the entries of other evals of the same checkpoint bytes) next to the
    checkpoint; each entry records the sha256 of the checkpoint bytes (header["checkpoint_sha256"]) and the
    temperature its score used (None for scores without one). An int8 eval, whose scores are not the fp32
    model's, merges into `beside_name` = thresholds_int8.json instead, which `score precision=int8` reads.
    Returns {score: (threshold, ID recall)}."""
    found = {name: threshold_at_tpr(values, TPR) for name, values in id_scores.items()}
    entries = {name: {"threshold": t, "id_tpr": r, "n_id": int(len(id_scores[name])),
                      "temperature": temperatures.get(name), "checkpoint_sha256": header["checkpoint_sha256"],
                      "eval_run": str(run_dir.resolve())} for name, (t, r) in found.items()}
    document = thresholds_document(entries, header)
    write_thresholds(run_dir / THRESHOLDS_FILE, document)
    where = display_path(run_dir / THRESHOLDS_FILE)
    notes: list[str] = []
    beside = ckpt_path.parent / beside_name
    try:
        notes = merge_beside_checkpoint(beside, document, header["checkpoint_sha256"])
        if not (notes and notes[0].startswith("left ")):
            where += f" and {display_path(beside)}"
    except OSError as exc:
        where += f" (not next to the checkpoint: {exc.strerror or exc})"
    cells = ", ".join(f"{name} {t:.6g}" for name, (t, _) in found.items())
    log.info(f"thresholds at {TPR:.0%} ID TPR (in-distribution when score >= threshold): {cells}; wrote {where}")
    for note in notes:
        log.info(f"note: {note}")
    return found


def draw_plots(run_dir: Path, scores: dict[str, dict[str, np.ndarray]], score_names: list[str],
               ood_names: list[str], thresholds: dict[str, tuple[float, float]], title: str) -> list[Path]:
    """hist_<set>.png (ID vs the set, one panel per score, energy first as in the paper's Figure 1) and
    roc_<set>.png (one curve per score, the 95% ID TPR threshold marked), computed from every scored image."""
    from energy_cli.reporting import plots

    order = sorted(score_names, key=lambda s: (s != "energy", s != "msp"))
    written = []
    for name in ood_names:
        hist, roc = run_dir / f"hist_{file_part(name)}.png", run_dir / f"roc_{file_part(name)}.png"
        plots.score_histograms(hist, {s: scores["id"][s] for s in order}, {s: scores[name][s] for s in order}, name,
                               {s: thresholds[s][0] for s in order}, f"{title}: ID vs {name}")
        curves = {s: roc_points(scores["id"][s], scores[name][s]) for s in order}
        labels = {s: f"{s}: AUROC {100 * auroc(scores['id'][s], scores[name][s]):.1f}, "
                     f"FPR95 {100 * fpr_at_tpr(scores['id'][s], scores[name][s]):.1f}" for s in order}
        points = {s: (acceptance_rate(scores[name][s], thresholds[s][0]), thresholds[s][1]) for s in order}
        plots.roc_curves(roc, curves, name, labels, points, f"{title}: ID vs {name}")
        written += [hist, roc]
    return written


def extended_options(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The settings of the energy-family detectors (react, dice, ash, knn, vim, gen) from their eval keys."""
    return {name: dict(cfg[name]) for name in EXTENDED_NAMES if cfg.get(name) is not None}


def int8_model(model: Classifier, train: ImageSet, normalizer: Normalizer, runtime: Runtime, seed: int) -> Classifier:
    """precision=int8: the model quantized, its activation ranges calibrated on a seeded random draw of ID
    training images (engine.quantize)."""
    started = time.perf_counter()
    count = min(len(train), CALIBRATION_IMAGES)
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count]
    batches = (x for x, _ in device_batches(train.images[chosen], normalizer, runtime, runtime.eval_batch_size))
    quantized = quantize_int8(model, batches)
    log.info(f"precision=int8: quantized the model, calibrated on {count} ID training images, in "
             f"{time.perf_counter() - started:.1f}s")
    return quantized


def run(cfg: DictConfig, run_dir: Path) -> Outcome:
    runtime = runtime_from_config(cfg)
    seed_everything(int(cfg.seed))
    ood_names = resolve_ood_names(cfg.ood, cfg.dataset)
    score_names = resolve_score_names(cfg.score)
    path = find_checkpoint(cfg, stages=STAGES, what="train or finetune")
    model, ckpt = load_model(path, cfg, runtime, for_inference=True)
    normalizer = checkpoint_normalizer(ckpt)
    temperature = float(cfg.temperature)
    data = data_settings(cfg)
    shape = data.shape
    train, test = load_id(data)
    oods = {name: load_ood_parts(name, data, shape) for name in ood_names}   # every set first: a missing one fails fast
    if runtime.int8:
        model = int8_model(model, train, normalizer, runtime, int(cfg.seed))
    log.info(f"evaluating {display_path(path)} (stage {ckpt['stage']}) on {len(test)} {cfg.dataset.name} test images "
             f"against {', '.join(ood_names)}; scores: {', '.join(score_names)}; {runtime.device.type} {runtime.precision}"
             + (", Winograd convolutions" if runtime.winograd else ""))

    batch_size = runtime.eval_batch_size
    detectors = build_detectors(score_names, model, normalizer, runtime, temperature=temperature,
                                odin_temperature=float(cfg.odin.temperature), odin_noise=float(cfg.odin.noise),
                                mahalanobis_noise=float(cfg.mahalanobis.noise), batch_size=batch_size,
                                options=extended_options(cfg))
    fit_detectors(detectors, train, path, ckpt[ckpt_io.DIGEST_KEY], runtime)
    tune_detectors(cfg, detectors, model, normalizer, runtime, test, train, shape, ood_names, run_dir)

    logits, scores = {}, {}
    logits["id"], scores["id"] = score_images(model, test.images, detectors, normalizer, runtime, batch_size)
    for name, parts in oods.items():   # one part per image size (ood_resize=native), else one
        scored = [score_images(model, part.images, detectors, normalizer, runtime, batch_size) for part in parts]
        logits[name] = torch.cat([part_logits for part_logits, _ in scored])
        scores[name] = {det.name: torch.cat([part_scores[det.name] for _, part_scores in scored]) for det in detectors}
    scores = {name: {score: values.numpy() for score, values in per.items()} for name, per in scores.items()}
    check_finite(scores)

    ood_samples = None if str(cfg.ood_samples) == "all" else int(cfg.ood_samples)
    base = {"dataset": cfg.dataset.name, "backbone": backbone_label(ckpt["backbone"]), "stage": ckpt["stage"],
            "checkpoint": str(path.resolve()), "temperature": temperature, "n_id": len(test),
            "id_acc": 100 * accuracy(logits["id"], test.labels)}
    temperatures = {det.name: det.temperature for det in detectors}
    rows = metric_rows(scores, score_names, ood_names, int(cfg.num_to_avg), ood_samples, int(cfg.seed), base,
                       temperatures)

    write_results(run_dir / "results.csv", rows, with_std=int(cfg.num_to_avg) > 1)
    if cfg.save_scores:
        arrays = {f"{name}/{score}": values for name, per in scores.items() for score, values in per.items()}
        arrays.update({f"{name}/logits": values.numpy() for name, values in logits.items()})
        write_scores(run_dir / "scores.npz", arrays)
    log.info(format_table(rows))
    header = {"checkpoint": str(path.resolve()), "checkpoint_sha256": ckpt[ckpt_io.DIGEST_KEY],
              "dataset": cfg.dataset.name, "backbone": backbone_label(ckpt["backbone"]), "stage": ckpt["stage"]}
    thresholds = store_thresholds(scores["id"], temperatures, header, run_dir, path,
                                  beside_name=INT8_THRESHOLDS_FILE if runtime.int8 else THRESHOLDS_FILE)
    if cfg.plots:
        title = f"{cfg.dataset.name} / {backbone_label(ckpt['backbone'])} / stage {ckpt['stage']}"
        pictures = draw_plots(run_dir, scores, score_names, ood_names, thresholds, title)
        log.info(f"drew {len(pictures)} pictures: {display_path(run_dir)}/hist_<set>.png and roc_<set>.png")
    log.info(f"wrote {display_path(run_dir / 'results.csv')}"
             + (f" and {display_path(run_dir / 'scores.npz')}" if cfg.save_scores else ""))
    return Outcome(rows, *eval_headline(rows))
