"""odin.tune / mahalanobis.tune: choose ODIN's temperature and noise and Mahalanobis's noise on validation OOD
data, as the paper's code does with the sweeps of its run.sh, instead of fixing them.

Every setting of the grid (odin.grid, mahalanobis.grid; the defaults are the grids of the paper's run.sh) scores
the ID test images and every validation OOD set (`validation_ood`: synthetic sets built from ID training
images, see data/validation.py, or folders the user names; never one of the run's OOD test sets), and the
setting with the lowest FPR95 averaged over the validation sets wins (ties: the higher mean AUROC, then the
first in grid order). The ID side is the ID test set, as in the paper's code. All settings of one detector share
each batch's forward pass. The chosen values replace the configured ones for the evaluation; they are printed,
written to tuning.json in the run folder (with every setting's validation metrics), and ODIN's temperature is
the `temperature` column of its results.csv rows.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import DictConfig

from energy_cli.commands.settings import data_settings
from energy_cli.config.overrides import as_list
from energy_cli.data import canonical_ood_name, load_ood
from energy_cli.data.batches import Normalizer
from energy_cli.data.images import ImageSet
from energy_cli.data.validation import synthetic_validation_sets
from energy_cli.detectors.base import Detector
from energy_cli.detectors.mahalanobis import Mahalanobis
from energy_cli.detectors.odin import ODIN
from energy_cli.detectors.scoring import score_images
from energy_cli.engine.runtime import Runtime
from energy_cli.errors import UserError
from energy_cli.fileio import atomic_write_bytes
from energy_cli.models import Classifier
from energy_cli.ood.metrics import auroc, fpr_at_tpr
from energy_cli.runs.folders import display_path

log = logging.getLogger(__name__)

FILENAME = "tuning.json"
SYNTHETIC = "synthetic"


def grid(values: dict[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every combination of the grid's values, in order (the last key varies fastest)."""
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(values[k]) for k in keys))]


def choose(table: Sequence[dict[str, Any]]) -> int:
    """Index of the winning row of `table` (rows with mean `fpr95` and `auroc` over the validation sets): the
    lowest FPR95, then the highest AUROC, then the first."""
    if not table:
        raise ValueError("nothing to choose from")
    return min(range(len(table)), key=lambda i: (table[i]["fpr95"], -table[i]["auroc"], i))


def validation_sets(cfg: DictConfig, train: ImageSet, shape: tuple[int, int, int],
                    test_names: Sequence[str]) -> list[ImageSet]:
    """The validation OOD sets the `validation_ood` key names: `synthetic` (built from ID training images) and
    any OOD set name or folder:PATH that is not one of this run's OOD test sets."""
    n = int(cfg.validation_samples)
    data = data_settings(cfg)
    sets: list[ImageSet] = []
    for name in as_list(cfg.validation_ood):
        if name == SYNTHETIC:
            sets += synthetic_validation_sets(train, n, int(cfg.seed))
            continue
        name = canonical_ood_name(name)
        if name in test_names:
            raise UserError(f"validation_ood names {name}, one of this run's OOD test sets; tune on other data "
                            f"(synthetic, or folder:PATH of held-out images)")
        ood = load_ood(name, data, shape)
        sets.append(ImageSet(f"val_{name}", ood.images[:n]))
    if not sets:
        raise UserError("validation_ood is empty; use [synthetic] or name a folder: validation_ood=[folder:PATH]")
    return sets


def _candidates(det: Detector, settings: list[dict[str, float]], model: Classifier, normalizer: Normalizer,
                runtime: Runtime) -> list[Detector]:
    out: list[Detector] = []
    for s in settings:
        if isinstance(det, ODIN):
            cand: Detector = ODIN(model, normalizer, runtime, float(s["temperature"]), float(s["noise"]))
        else:
            cand = Mahalanobis(model, normalizer, runtime, float(s["noise"]), det.batch_size)
            cand.load_state_dict(det.state_dict())
        cand.name = f"{det.name}[{len(out)}]"
        out.append(cand)
    return out


def tune_detectors(cfg: DictConfig, detectors: list[Detector], model: Classifier, normalizer: Normalizer,
                   runtime: Runtime, test: ImageSet, train: ImageSet, shape: tuple[int, int, int],
                   test_names: Sequence[str], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Replace the ODIN / Mahalanobis detectors whose `tune` key is true by the same detector at the setting
    chosen on validation OOD data; write tuning.json. Returns {score: its tuning record} (empty: nothing tuned)."""
    wanted = {"odin": ODIN, "mahalanobis": Mahalanobis}
    targets = [i for i, d in enumerate(detectors)
               if d.name in wanted and isinstance(d, wanted[d.name]) and bool(cfg[d.name].get("tune", False))]
    if not targets:
        return {}
    sets = validation_sets(cfg, train, shape, test_names)
    records: dict[str, dict[str, Any]] = {}
    for i in targets:
        det = detectors[i]
        settings = grid({k: list(v) for k, v in cfg[det.name].grid.items()})
        cands = _candidates(det, settings, model, normalizer, runtime)
        batch = runtime.eval_batch_size
        _, id_scores = score_images(model, test.images, cands, normalizer, runtime, batch)
        per_set = [score_images(model, s.images, cands, normalizer, runtime, batch)[1] for s in sets]
        table = []
        for cand, setting in zip(cands, settings):
            ins = id_scores[cand.name].numpy()
            fprs = [fpr_at_tpr(ins, scores[cand.name].numpy()) for scores in per_set]
            aurocs = [auroc(ins, scores[cand.name].numpy()) for scores in per_set]
            table.append({**setting, "fpr95": 100 * float(np.mean(fprs)), "auroc": 100 * float(np.mean(aurocs)),
                          "per_set_fpr95": {s.name: 100 * f for s, f in zip(sets, fprs)}})
        best = choose(table)
        chosen = cands[best]
        chosen.name = det.name
        detectors[i] = chosen
        records[det.name] = {"chosen": settings[best], "validation_fpr95": table[best]["fpr95"],
                             "validation_auroc": table[best]["auroc"], "id": f"{test.name} test",
                             "validation_sets": [s.name for s in sets],
                             "n_validation": [len(s) for s in sets], "grid": table}
        cells = ", ".join(f"{k} {v:g}" for k, v in settings[best].items())
        log.info(f"{det.name}: tuned on {len(sets)} validation OOD sets ({', '.join(s.name for s in sets)}): {cells} "
              f"(mean validation FPR95 {table[best]['fpr95']:.2f}%, AUROC {table[best]['auroc']:.2f}%; "
              f"{len(settings)} settings tried)")
    write_tuning(run_dir / FILENAME, records)
    log.info(f"wrote {display_path(run_dir / FILENAME)}")
    return records


def write_tuning(path: Path, records: dict[str, dict[str, Any]]) -> None:
    """tuning.json: per tuned score, the chosen setting and every setting's validation metrics."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    atomic_write_bytes(path, (json.dumps(clean(records), indent=2) + "\n").encode())
