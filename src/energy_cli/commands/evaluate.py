"""energy-ood eval: score the ID test set and each OOD set once, compute the metrics over `num_to_avg`
draws of `ood_samples` OOD scores per set, write results.csv (and scores.npz), print the table.

Every score is a detector (detectors.py); detectors with a fit (mahalanobis) are fitted on the ID training
set once per checkpoint, the fit cached in `mahalanobis.pt` next to the checkpoint."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from energy_cli import checkpoint as ckpt_io
from energy_cli.commands import display_path
from energy_cli.commands.common import STAGES, checkpoint_normalizer, find_checkpoint, load_model
from energy_cli.config import as_list
from energy_cli.data import id_shape, load_id, load_ood, resolve_ood_names
from energy_cli.data.images import ImageSet
from energy_cli.detectors import DETECTOR_NAMES, Detector, build_detectors, score_images
from energy_cli.engine import Runtime, accuracy, mix_seed, runtime_from_config, seed_everything
from energy_cli.errors import UserError
from energy_cli.metrics import METRIC_NAMES, draw_indices, metrics_over_draws
from energy_cli.results import format_table, write_results, write_scores

SCORE_NAMES = list(DETECTOR_NAMES)   # msp, maxlogit, energy, odin, mahalanobis: the order of `score=all`


def resolve_score_names(value: Any) -> list[str]:
    """The `score` key -> validated list; `all` = every score."""
    names: list[str] = []
    for name in as_list(value):
        names += SCORE_NAMES if name == "all" else [name]
    unknown = [n for n in names if n not in SCORE_NAMES]
    if unknown:
        raise UserError(f"score={unknown[0]} is not known; choose from: {', '.join(SCORE_NAMES)} or all")
    if not names:
        raise UserError(f"score is empty; choose from: {', '.join(SCORE_NAMES)} or all")
    return list(dict.fromkeys(names))


def fit_key(ckpt_path: Path, train: ImageSet, runtime: Runtime) -> str:
    """What a Mahalanobis fit depends on: the checkpoint's bytes, the training images and labels, and the
    precision of the forward passes. A cache written under another key is refitted."""
    h = hashlib.sha256(b"mahalanobis/1")
    h.update(ckpt_io.file_digest(ckpt_path).encode())
    h.update(train.images.contiguous().numpy().tobytes())
    if train.labels is not None:
        h.update(train.labels.long().contiguous().numpy().tobytes())
    h.update(runtime.precision.encode())
    return h.hexdigest()


def fit_detectors(detectors: list[Detector], train: ImageSet, ckpt_path: Path, runtime: Runtime) -> None:
    """Fit the detectors that need it (mahalanobis) on the ID training set, once per checkpoint: the fit is
    cached next to the checkpoint as `<score>.pt` (e.g. mahalanobis.pt), keyed by fit_key, and reused while
    the key matches. When that folder is not writable the fit is kept in memory only."""
    for det in detectors:
        if not det.needs_fit:
            continue
        cache = ckpt_path.parent / f"{det.name}.pt"
        key = fit_key(ckpt_path, train, runtime)
        state = ckpt_io.load_fit_cache(cache, key)
        if state is not None:
            det.load_state_dict(state)
            print(f"{det.name}: reusing the fit cached in {display_path(cache)}")
            continue
        det.fit(train)
        try:
            ckpt_io.save_fit_cache(cache, key, det.state_dict())
            note = f"cached in {display_path(cache)}"
        except OSError as exc:
            note = f"kept in memory only: cannot write {display_path(cache)}: {exc.strerror or exc}"
        print(f"{det.name}: fitted on {len(train)} {train.name} training images ({note})")


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


def run(cfg: DictConfig, run_dir: Path) -> list[dict[str, Any]]:
    runtime = runtime_from_config(cfg)
    seed_everything(int(cfg.seed))
    ood_names = resolve_ood_names(cfg.ood, cfg.dataset)
    score_names = resolve_score_names(cfg.score)
    path = find_checkpoint(cfg, stages=STAGES, what="train or finetune")
    model, ckpt = load_model(path, cfg, runtime)
    normalizer = checkpoint_normalizer(ckpt)
    temperature = float(cfg.temperature)
    shape = id_shape(cfg)
    train, test = load_id(cfg)
    oods = [load_ood(name, cfg, shape) for name in ood_names]   # every set first: a missing one fails fast
    print(f"evaluating {display_path(path)} (stage {ckpt['stage']}) on {len(test)} {cfg.dataset.name} test images "
          f"against {', '.join(ood_names)}; scores: {', '.join(score_names)}")

    batch_size = int(cfg.eval_batch_size)
    detectors = build_detectors(score_names, model, normalizer, runtime, temperature=temperature,
                                odin_temperature=float(cfg.odin.temperature), odin_noise=float(cfg.odin.noise),
                                mahalanobis_noise=float(cfg.mahalanobis.noise), batch_size=batch_size)
    fit_detectors(detectors, train, path, runtime)

    logits, scores = {}, {}
    logits["id"], scores["id"] = score_images(model, test.images, detectors, normalizer, runtime, batch_size)
    for ood in oods:
        logits[ood.name], scores[ood.name] = score_images(model, ood.images, detectors, normalizer, runtime,
                                                          batch_size)
    scores = {name: {score: values.numpy() for score, values in per.items()} for name, per in scores.items()}

    ood_samples = None if str(cfg.ood_samples) == "all" else int(cfg.ood_samples)
    base = {"dataset": cfg.dataset.name, "backbone": ckpt["backbone"]["name"], "stage": ckpt["stage"],
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
    print(format_table(rows))
    print(f"wrote {display_path(run_dir / 'results.csv')}"
          + (f" and {display_path(run_dir / 'scores.npz')}" if cfg.save_scores else ""))
    return rows
