"""energy-ood eval: score the ID test set and each OOD set once, compute the metrics over `num_to_avg`
draws of `ood_samples` OOD scores per set, write results.csv (and scores.npz), print the table."""

from __future__ import annotations

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
from energy_cli.metrics import METRIC_NAMES, draw_indices, metrics_over_draws
from energy_cli.results import format_table, write_results, write_scores
from energy_cli.scores import LOGIT_SCORES

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
    oods = [load_ood(name, cfg, shape) for name in ood_names]   # every set first: a missing one fails fast
    print(f"evaluating {display_path(path)} (stage {ckpt['stage']}) on {len(test)} {cfg.dataset.name} test images "
          f"against {', '.join(ood_names)}; scores: {', '.join(score_names)}")

    logits = {"id": predict(model, test.images, normalizer, runtime, int(cfg.eval_batch_size))[0]}
    for ood in oods:
        logits[ood.name] = predict(model, ood.images, normalizer, runtime, int(cfg.eval_batch_size))[0]
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
    print(f"wrote {display_path(run_dir / 'results.csv')}"
          + (f" and {display_path(run_dir / 'scores.npz')}" if cfg.save_scores else ""))
    return rows
