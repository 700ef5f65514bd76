"""energy-ood score PATH...: score image files and folders with a trained model; writes scores.csv
(path, predicted class, its softmax probability, energy score, ood flag) and unreadable.csv when some
files could not be decoded. The ood flag uses the energy threshold `eval` stored next to the checkpoint
(thresholds.json, 95% ID TPR) unless threshold= is given."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from energy_cli.commands.checkpoints import (
    STAGES,
    checkpoint_normalizer,
    find_checkpoint,
    load_model,
)
from energy_cli.commands.evaluate import int8_model
from energy_cli.commands.settings import data_settings, runtime_from_config
from energy_cli.config.overrides import as_list
from energy_cli.data import load_id
from energy_cli.data.files import expand_paths, load_image_files
from energy_cli.engine.inference import predict
from energy_cli.engine.seeding import seed_everything
from energy_cli.errors import UserError
from energy_cli.ood.scores import energy_score, msp_score
from energy_cli.runs import checkpoint as ckpt_io
from energy_cli.runs.folders import display_path
from energy_cli.runs.outputs import write_csv
from energy_cli.runs.thresholds import FILENAME as THRESHOLDS_FILE
from energy_cli.runs.thresholds import INT8_FILENAME as INT8_THRESHOLDS_FILE
from energy_cli.runs.thresholds import is_hand_written, read_thresholds, stored_entry

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["path", "class", "softmax", "energy_score", "ood"]
UNREADABLE_COLUMNS = ["path", "reason"]


def input_files(paths: list[str]) -> list[Path]:
    """The image files the given files and folders name; a missing path or no image at all is a user error."""
    if not paths:
        raise UserError("name the images to score: energy-ood score PATH... (image files or folders)")
    missing = [p for p in paths if not Path(p).expanduser().exists()]
    if missing:
        raise UserError(f"no such file or folder: {missing[0]}")
    files = expand_paths(Path(p).expanduser() for p in paths)
    if not files:
        raise UserError(f"no image files under {', '.join(paths)} (looked for .png .jpg .jpeg .bmp .gif .tif .webp ...)")
    return files


def energy_threshold(cfg: DictConfig, ckpt_path: Path, checkpoint_sha256: str, temperature: float,
                     int8: bool = False) -> tuple[float, str]:
    """threshold= when given, else the energy entry of thresholds.json next to the checkpoint (with int8:
    thresholds_int8.json, written by `eval precision=int8`), which must have been measured on these checkpoint
    bytes at this temperature (runs/thresholds.stored_entry)."""
    if cfg.threshold is not None:
        return float(cfg.threshold), "given"
    path = ckpt_path.parent / (INT8_THRESHOLDS_FILE if int8 else THRESHOLDS_FILE)
    rerun = f"energy-ood eval ckpt={display_path(ckpt_path)} score=[msp,energy]" + (" precision=int8" if int8 else "")
    threshold, entry = stored_entry(read_thresholds(path), "energy", checkpoint_sha256, temperature,
                                    Path(display_path(path)), rerun)
    if is_hand_written(entry):
        return threshold, f"{display_path(path)}, hand-written"
    tpr = entry.get("id_tpr")
    return threshold, f"{display_path(path)}" + (f", {100 * tpr:.1f}% ID TPR" if isinstance(tpr, (int, float)) else "")


def run(cfg: DictConfig, run_dir: Path) -> list[dict[str, Any]]:
    runtime = runtime_from_config(cfg)
    seed_everything(int(cfg.seed))
    files = input_files(as_list(cfg.paths))
    ckpt_path = find_checkpoint(cfg, stages=STAGES, what="train or finetune")
    model, ckpt = load_model(ckpt_path, cfg, runtime, for_inference=True)
    normalizer = checkpoint_normalizer(ckpt)
    temperature = float(cfg.temperature)
    threshold, source = energy_threshold(cfg, ckpt_path, ckpt[ckpt_io.DIGEST_KEY], temperature, runtime.int8)
    if runtime.int8:   # calibrated like eval's int8 model: the same seeded draw of ID training images
        train, _ = load_id(data_settings(cfg))
        model = int8_model(model, train, normalizer, runtime, int(cfg.seed))
    shape = (int(ckpt["in_channels"]), int(ckpt["image_size"]), int(ckpt["image_size"]))
    chunk = int(cfg.chunk_size)
    log.info(f"scoring {len(files)} image files with {display_path(ckpt_path)} (stage {ckpt['stage']}), resized to "
             f"{shape[0]}x{shape[1]}x{shape[2]}; ood when energy score < {threshold:.6g} ({source})")

    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    failed: list[tuple[Path, str]] = []
    with tqdm(total=len(files), desc="score", unit="img", disable=not runtime.progress, leave=False,
              dynamic_ncols=True) as bar:
        for start in range(0, len(files), chunk):
            part = files[start:start + chunk]
            images, ok, bad = load_image_files(part, shape, name="images")
            failed += bad
            if ok:
                logits, _ = predict(model, images.images, normalizer, runtime, runtime.eval_batch_size)
                energy = energy_score(logits, temperature)
                columns = zip(ok, logits.argmax(dim=1).tolist(), msp_score(logits).tolist(), energy.tolist(),
                              (energy < threshold).tolist())
                rows += [{"path": str(p), "class": c, "softmax": s, "energy_score": e, "ood": int(o)}
                         for p, c, s, e, o in columns]
            bar.update(len(part))

    if failed:
        write_csv(run_dir / "unreadable.csv", [{"path": str(p), "reason": r} for p, r in failed], UNREADABLE_COLUMNS)
        shown = "; ".join(f"{p} ({r})" for p, r in failed[:5]) + ("; ..." if len(failed) > 5 else "")
        log.info(f"{len(failed)} of {len(files)} files could not be read (listed in "
                 f"{display_path(run_dir / 'unreadable.csv')}): {shown}")
    if not rows:
        raise UserError(f"none of the {len(files)} files could be decoded as an image; see "
                        f"{display_path(run_dir / 'unreadable.csv')}")
    write_csv(run_dir / "scores.csv", rows, SCORE_COLUMNS)

    flagged = sum(r["ood"] for r in rows)
    classes = Counter(r["class"] for r in rows)
    energies = torch.tensor([r["energy_score"] for r in rows], dtype=torch.float64)
    log.info(f"scored {len(rows)} images: {flagged} ({100 * flagged / len(rows):.1f}%) flagged ood, "
             f"{len(rows) - flagged} in-distribution; energy score median {energies.median():.2f} "
             f"(min {energies.min():.2f}, max {energies.max():.2f})")
    top = ", ".join(f"{c}: {n}" for c, n in sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))[:10])
    log.info(f"predicted classes (class: images): {top}" + (" ..." if len(classes) > 10 else ""))
    log.info(f"wrote {display_path(run_dir / 'scores.csv')}")
    return rows
