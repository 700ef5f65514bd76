"""Time the paper recipe (experiment=cifar10_wrn: WRN-40-2) on this machine and extrapolate to full runs.

Runs real training and fine-tuning steps through the CLI on random images written in the public CIFAR and
300K-images formats (one step per epoch, so train_log.csv times every step; the first is left out as warm-up
and the median of the rest is used), times inference (`engine.predict`, best of three) and JPEG decoding of a
folder set, then scales by the recipe's sizes. An extrapolation, not a measurement of a full run; on a busy
machine the figures vary a lot between runs.

    python scripts/time_recipe.py [--steps 3] [--device auto] [--precision auto]
"""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))   # this checkout's code, also when another copy is installed
TRAIN, TEST, BATCH, OUT_BATCH = 50_000, 10_000, 128, 256
# OOD test images scored by one eval (Textures, SVHN test, Places365 as a 10,000-image subset, LSUN-C,
# LSUN-R, iSUN) and the JPEGs among them (all but SVHN), decoded only on the first eval.
OOD_IMAGES = 5_640 + 26_032 + 10_000 + 10_000 + 10_000 + 8_925
JPEGS = OOD_IMAGES - 26_032


def write_data(root: Path, n_train: int, n_test: int, n_outliers: int, n_jpegs: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                              "test_batch"]):
        n = n_test if name == "test_batch" else (n_train if i == 0 else 0)
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(batch))
    np.save(root / "300K_random_images.npy", rng.integers(0, 256, (n_outliers, 32, 32, 3), dtype=np.uint8))
    (root / "LSUN").mkdir()
    for i in range(n_jpegs):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / "LSUN" / f"{i}.jpg")


def cli(work: Path, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "energy_cli", *args], cwd=work, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def step_seconds(run: Path) -> list[float]:
    """Seconds of every epoch (= one step plus scoring the tiny test set) after the first."""
    with open(run / "train_log.csv", newline="") as f:
        return [float(r["seconds"]) for r in csv.DictReader(f)][1:]


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="training steps to time per command (first = warm-up)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--infer", type=int, default=2048, help="images to time inference on")
    parser.add_argument("--jpegs", type=int, default=400, help="JPEG files to time decoding on")
    args = parser.parse_args()

    import torch
    from omegaconf import OmegaConf

    from energy_cli.commands.checkpoints import checkpoint_normalizer, load_model
    from energy_cli.data import folders
    from energy_cli.engine.inference import predict
    from energy_cli.commands.settings import runtime_from_config

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n_test = 32
        write_data(work / "data", BATCH, n_test, 1024, args.jpegs)
        common = ["experiment=cifar10_wrn", f"epochs={args.steps}", "progress=false", "data_root=data",
                  f"device={args.device}", f"precision={args.precision}"]
        cli(work, "train", *common, "hydra.run.dir=train")
        cli(work, "finetune", *common, "ckpt=train/checkpoint.pt", "hydra.run.dir=finetune")
        cfg = OmegaConf.create({"device": args.device, "precision": args.precision, "progress": False,
                                "dataset": {"name": "cifar10", "num_classes": 10, "channels": 3, "image_size": 32},
                                "backbone": {"name": "wrn40_2"}})
        runtime = runtime_from_config(cfg)
        model, ckpt = load_model(work / "train" / "checkpoint.pt", cfg, runtime)
        images = torch.randint(0, 256, (args.infer, 3, 32, 32), dtype=torch.uint8)
        batch = runtime.eval_batch_size                                             # what eval uses
        predict(model, images[:batch], checkpoint_normalizer(ckpt), runtime, batch)  # warm-up
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            predict(model, images, checkpoint_normalizer(ckpt), runtime, batch)
            runs.append((time.perf_counter() - start) / args.infer)
        per_image = min(runs)
        start = time.perf_counter()
        folders.load_folder(work / "data" / "LSUN", "lsun_c", (3, 32, 32), cache_dir=None)
        per_jpeg = (time.perf_counter() - start) / args.jpegs
        # each epoch's time in train_log includes scoring the tiny test set once: take it out
        train_steps = [t - n_test * per_image for t in step_seconds(work / "train")]
        finetune_steps = [t - n_test * per_image for t in step_seconds(work / "finetune")]
        train_step, finetune_step = float(np.median(train_steps)), float(np.median(finetune_steps))

    steps = -(-TRAIN // BATCH)
    pretrain = 100 * (steps * train_step + TEST * per_image)
    finetune = 10 * (steps * finetune_step + TEST * per_image)
    evaluate = (TEST + OOD_IMAGES) * per_image
    print(f"device {runtime.device.type}, precision {runtime.precision}, torch threads {torch.get_num_threads()}")
    print(f"step times (s): train {' '.join(f'{t:.2f}' for t in train_steps)}; "
          f"fine-tune {' '.join(f'{t:.2f}' for t in finetune_steps)}")
    print(f"measured (median): train step (128 images) {train_step:.2f} s, fine-tune step (128 + 256) {finetune_step:.2f} s, "
          f"inference {1000 * per_image:.2f} ms/image, JPEG decoding {1000 * per_jpeg:.2f} ms/file")
    print(f"extrapolated: pretrain (100 epochs x {steps} steps) {hours(pretrain)}, fine-tune (10 epochs) "
          f"{hours(finetune)}, eval ({TEST + OOD_IMAGES:,} images scored once) {hours(evaluate)} "
          f"+ {hours(JPEGS * per_jpeg)} decoding {JPEGS:,} JPEGs on the first eval only")


if __name__ == "__main__":
    main()
