"""energy-ood eval: score the ID test set and each OOD set once, compute the metrics over `num_to_avg`
draws of `ood_samples` OOD scores per set, write results.csv (and scores.npz), print the table; store the
deployment thresholds (thresholds.json, here and next to the checkpoint) and, with plots=true, draw the
score histograms and ROC curves."""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from energy_cli.commands import display_path
from energy_cli.commands.common import STAGES, checkpoint_normalizer, find_checkpoint, load_model
from energy_cli.config import as_list
from energy_cli.data import id_shape, load_id, load_ood, resolve_ood_names
from energy_cli.engine import accuracy, mix_seed, predict, runtime_from_config, seed_everything
from energy_cli.errors import UserError
from energy_cli.metrics import (METRIC_NAMES, acceptance_rate, auroc, draw_indices, fpr_at_tpr, metrics_over_draws,
                                roc_points, threshold_at_tpr)
from energy_cli.results import format_table, write_results, write_scores
from energy_cli.scores import LOGIT_SCORES
from energy_cli.thresholds import FILENAME as THRESHOLDS_FILE
from energy_cli.thresholds import TPR, thresholds_document, write_thresholds

SCORE_NAMES = list(LOGIT_SCORES)


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


def compute_scores(logits: torch.Tensor, names: list[str], temperature: float) -> dict[str, np.ndarray]:
    """Every requested logit-based score of one set, from one forward pass's fp32 logits."""
    return {name: LOGIT_SCORES[name](logits.float(), temperature).numpy() for name in names}


def metric_rows(scores: dict[str, dict[str, np.ndarray]], score_names: list[str], ood_names: list[str],
                num_to_avg: int, ood_samples: int | None, seed: int, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (score, OOD set) plus an `average` row per score, metrics in percent.

    Each OOD set gets `num_to_avg` seeded draws of `ood_samples` scores (the same draws for every score);
    the ID scores are used in full. A row holds the mean over draws (and the std when num_to_avg > 1);
    the average row averages the sets within each draw, then takes mean and std over the draws.
    """
    rows = []
    draws = {name: draw_indices(len(scores[name][score_names[0]]), ood_samples, num_to_avg,
                                mix_seed(seed, zlib.crc32(name.encode()))) for name in ood_names}
    for score in score_names:
        per_set = {name: metrics_over_draws(scores["id"][score], scores[name][score], draws[name]) for name in ood_names}
        blocks = [(name, per_set[name], len(draws[name][0])) for name in ood_names]
        average = {m: np.mean([per_set[name][m] for name in ood_names], axis=0) for m in METRIC_NAMES}
        blocks.append(("average", average, sum(len(draws[name][0]) for name in ood_names)))
        for name, values, n_ood in blocks:
            row = {**base, "score": score, "ood": name, "n_ood": n_ood}
            for m in METRIC_NAMES:
                row[m] = 100 * float(np.mean(values[m]))
                if num_to_avg > 1:
                    row[f"{m}_std"] = 100 * float(np.std(values[m]))
            rows.append(row)
    return rows


def store_thresholds(id_scores: dict[str, np.ndarray], temperature: float, header: dict[str, Any], run_dir: Path,
                     ckpt_path: Path) -> dict[str, tuple[float, float]]:
    """Per score, the threshold at 95% ID TPR on the ID test scores -> thresholds.json in the run folder and
    (merged with earlier entries) next to the checkpoint. Returns {score: (threshold, ID recall)}."""
    found = {name: threshold_at_tpr(values, TPR) for name, values in id_scores.items()}
    entries = {name: {"threshold": t, "id_tpr": r, "n_id": int(len(id_scores[name])), "temperature": temperature,
                      "eval_run": str(run_dir.resolve())} for name, (t, r) in found.items()}
    document = thresholds_document(entries, header)
    write_thresholds(run_dir / THRESHOLDS_FILE, document)
    where = display_path(run_dir / THRESHOLDS_FILE)
    try:
        write_thresholds(ckpt_path.parent / THRESHOLDS_FILE, document, merge=True)
        where += f" and {display_path(ckpt_path.parent / THRESHOLDS_FILE)}"
    except OSError as exc:
        where += f" (not next to the checkpoint: {exc.strerror or exc})"
    cells = ", ".join(f"{name} {t:.6g}" for name, (t, _) in found.items())
    print(f"thresholds at {TPR:.0%} ID TPR (in-distribution when score >= threshold): {cells}; wrote {where}")
    return found


def _file_part(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def draw_plots(run_dir: Path, scores: dict[str, dict[str, np.ndarray]], score_names: list[str],
               ood_names: list[str], thresholds: dict[str, tuple[float, float]], title: str) -> list[Path]:
    """hist_<set>.png (ID vs the set, one panel per score, energy first as in the paper's Figure 1) and
    roc_<set>.png (one curve per score, the 95% ID TPR threshold marked), computed from every scored image."""
    from energy_cli import plots

    order = sorted(score_names, key=lambda s: (s != "energy", s != "msp"))
    written = []
    for name in ood_names:
        hist, roc = run_dir / f"hist_{_file_part(name)}.png", run_dir / f"roc_{_file_part(name)}.png"
        plots.score_histograms(hist, {s: scores["id"][s] for s in order}, {s: scores[name][s] for s in order}, name,
                               {s: thresholds[s][0] for s in order}, f"{title}: ID vs {name}")
        curves = {s: roc_points(scores["id"][s], scores[name][s]) for s in order}
        labels = {s: f"{s}: AUROC {100 * auroc(scores['id'][s], scores[name][s]):.1f}, "
                     f"FPR95 {100 * fpr_at_tpr(scores['id'][s], scores[name][s]):.1f}" for s in order}
        points = {s: (acceptance_rate(scores[name][s], thresholds[s][0]), thresholds[s][1]) for s in order}
        plots.roc_curves(roc, curves, name, labels, points, f"{title}: ID vs {name}")
        written += [hist, roc]
    return written


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
    _, test = load_id(cfg)
    print(f"evaluating {display_path(path)} (stage {ckpt['stage']}) on {len(test)} {cfg.dataset.name} test images "
          f"against {', '.join(ood_names)}; scores: {', '.join(score_names)}")

    logits = {"id": predict(model, test.images, normalizer, runtime, int(cfg.eval_batch_size))[0]}
    for name in ood_names:
        ood = load_ood(name, cfg, shape)
        logits[name] = predict(model, ood.images, normalizer, runtime, int(cfg.eval_batch_size))[0]
    scores = {name: compute_scores(values, score_names, temperature) for name, values in logits.items()}

    ood_samples = None if str(cfg.ood_samples) == "all" else int(cfg.ood_samples)
    base = {"dataset": cfg.dataset.name, "backbone": ckpt["backbone"]["name"], "stage": ckpt["stage"],
            "checkpoint": str(path.resolve()), "temperature": temperature, "n_id": len(test),
            "id_acc": 100 * accuracy(logits["id"], test.labels)}
    rows = metric_rows(scores, score_names, ood_names, int(cfg.num_to_avg), ood_samples, int(cfg.seed), base)

    write_results(run_dir / "results.csv", rows, with_std=int(cfg.num_to_avg) > 1)
    if cfg.save_scores:
        arrays = {f"{name}/{score}": values for name, per in scores.items() for score, values in per.items()}
        arrays.update({f"{name}/logits": values.numpy() for name, values in logits.items()})
        write_scores(run_dir / "scores.npz", arrays)
    print(format_table(rows))
    header = {"checkpoint": str(path.resolve()), "dataset": cfg.dataset.name, "backbone": ckpt["backbone"]["name"],
              "stage": ckpt["stage"]}
    thresholds = store_thresholds(scores["id"], temperature, header, run_dir, path)
    if cfg.plots:
        title = f"{cfg.dataset.name} / {ckpt['backbone']['name']} / stage {ckpt['stage']}"
        pictures = draw_plots(run_dir, scores, score_names, ood_names, thresholds, title)
        print(f"drew {len(pictures)} pictures: {display_path(run_dir)}/hist_<set>.png and roc_<set>.png")
    print(f"wrote {display_path(run_dir / 'results.csv')}"
          + (f" and {display_path(run_dir / 'scores.npz')}" if cfg.save_scores else ""))
    return rows
