"""Benchmark: energy-ood's training and evaluation path against a plain PyTorch loop, same model, weights and images.

    python scripts/bench.py                 # CPU or GPU (device=auto), prints a table and writes bench.csv
    python scripts/bench.py --compile       # also measure torch.compile (opt-in `compile=true`)
    python scripts/bench.py --quick         # tiny sizes: checks that the script works (used by the tests)

The plain loop is how the paper's code runs: fp32 eager, a DataLoader over per-image torchvision transforms
(PIL conversion, random crop with 4-pixel padding and flip for training; ToTensor + Normalize), batch 128 for
training and 200 for evaluation. Ours is the code the commands run: `engine.fit` (uint8 tensors on the device,
batched on-device augmentation, bf16 autocast where it pays, channels_last, no host sync inside an epoch) and
`detectors.score_images` with eval's default scores (one forward pass per batch of 1,024 for every logit score). Both use WideResNet-40-2 on 3x32x32 inputs with the same initial
weights and the same uint8 images. Also timed: the paper's protocol (10 draws of 2,000 OOD scores for each of 6 sets
against 10,000 ID scores) from precomputed score vectors, to show that it costs about one scoring pass.
On a GPU the script also reports seconds per CIFAR-10-sized training epoch (50,000 images) and per full evaluation
(10,000 ID + 6 x 2,000 OOD images).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from energy_cli.data.batches import Normalizer  # noqa: E402
from energy_cli.data.images import ImageSet  # noqa: E402
from energy_cli.detectors import build_detectors
from energy_cli.detectors.scoring import score_images
from energy_cli.engine.loop import (
    LoopState,
    TrainSpec,
    fit,
    make_optimizer,
    make_scheduler,
)
from energy_cli.engine.runtime import (
    Runtime,
    prepare_model,
    resolve_device,
    resolve_eval_batch_size,
    resolve_precision,
    set_threads,
)
from energy_cli.models import build_model  # noqa: E402
from energy_cli.ood.metrics import draw_indices, metrics_over_draws

MEAN = (0.4914, 0.4824, 0.4467)
STD = (0.2471, 0.2435, 0.2616)
WRN = {"name": "wrn40_2", "depth": 40, "widen_factor": 2, "dropout": 0.3}
CIFAR_TRAIN, FULL_EVAL = 50_000, 10_000 + 6 * 2_000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the plain loop (the paper's way)

class PlainDataset(torch.utils.data.Dataset):
    """Per-image PIL conversion and torchvision transforms, as in the paper's code."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool):
        import torchvision.transforms as T

        self.images, self.labels = images, labels  # N,32,32,3 uint8
        ops = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
        self.transform = T.Compose([*ops, T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def plain_eval(model, images_hwc, labels, device, workers: int) -> float:
    loader = torch.utils.data.DataLoader(PlainDataset(images_hwc, labels, train=False), batch_size=200,
                                         shuffle=False, num_workers=workers, pin_memory=device.type == "cuda")
    model.eval()
    with torch.no_grad():
        x, _ = next(iter(loader))  # warm-up
        model(x.to(device))
        sync(device)
        start = time.perf_counter()
        for x, _ in loader:
            logits = model(x.to(device, non_blocking=True))
            F.softmax(logits, dim=1).cpu()
        sync(device)
    return len(images_hwc) / (time.perf_counter() - start)


def plain_train(model, images_hwc, labels, device, workers: int, steps: int) -> float:
    loader = torch.utils.data.DataLoader(PlainDataset(images_hwc, labels, train=True), batch_size=128, shuffle=True,
                                         num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    model.train()

    def run(n: int) -> int:
        done = 0
        while done < n:
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()  # the usual per-step logging sync
                done += 1
                if done == n:
                    break
        return done

    run(1)  # warm-up
    sync(device)
    start = time.perf_counter()
    n = run(steps)
    sync(device)
    return n * 128 / (time.perf_counter() - start)


# --------------------------------------------------------------------------- our path (what the commands run)

def ours_eval(model, images: torch.Tensor, runtime: Runtime, batch: int) -> float:
    """What `energy-ood eval` runs per set: one pass for the default scores (msp, energy)."""
    norm = Normalizer(MEAN, STD)
    detectors = build_detectors(["msp", "energy"], model, norm, runtime, batch_size=batch)
    score_images(model, images[:batch], detectors, norm, runtime, batch)  # warm-up (and compilation)
    sync(runtime.device)
    start = time.perf_counter()
    score_images(model, images, detectors, norm, runtime, batch)
    return len(images) / (time.perf_counter() - start)


def ours_train(model, images: torch.Tensor, labels: torch.Tensor, runtime: Runtime, steps: int) -> float:
    norm = Normalizer(MEAN, STD)
    tiny_test = ImageSet("test", images[:8], labels[:8])

    def run(n_steps: int) -> float:
        train = ImageSet("train", images[: n_steps * 128], labels[: n_steps * 128])
        spec = TrainSpec(train=train, test=tiny_test, normalizer=norm,
                         objective=lambda logits, y, n_in: F.cross_entropy(logits, y),
                         epochs=1, batch_size=128, seed=0, crop_pad=4, flip=True, description="bench")
        opt = make_optimizer(model, 0.1, 0.9, 5e-4, True)
        sched = make_scheduler(opt, n_steps, 0.1)
        start = time.perf_counter()
        fit(model, spec, runtime, opt, sched, LoopState(), save=lambda state: None)
        sync(runtime.device)
        return time.perf_counter() - start

    run(2)  # warm-up (and compilation)
    return steps * 128 / run(steps)


def protocol_seconds(n_id: int = 10_000, n_ood: int = 2_000, sets: int = 6, draws: int = 10) -> float:
    """Seconds for the metrics of `draws` draws of `n_ood` scores per set, from precomputed score vectors."""
    rng = np.random.default_rng(0)
    id_scores = rng.normal(1, 1, n_id)
    start = time.perf_counter()
    for s in range(sets):
        ood_scores = rng.normal(0, 1, 5 * n_ood)
        metrics_over_draws(id_scores, ood_scores, draw_indices(len(ood_scores), n_ood, draws, seed=s))
    return time.perf_counter() - start


# --------------------------------------------------------------------------- main

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="our path's precision: auto | fp32 | bf16")
    p.add_argument("--compile", action="store_true", help="also measure our path with torch.compile")
    p.add_argument("--eval-images", type=int, default=None, help="images per eval measurement")
    p.add_argument("--train-steps", type=int, default=None, help="training steps (batch 128) per measurement")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop (paper: 2-4)")
    p.add_argument("--eval-batch", default="auto", help="our eval batch size (auto: 256 on a CPU, 1024 on a GPU)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    p.add_argument("--out", default=None, help="folder for bench.csv (default outputs/bench/<date>_<time>)")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    if device.type == "cpu":
        set_threads("auto")
    gpu = device.type == "cuda"
    eval_images = args.eval_images or (64 if args.quick else (20_000 if gpu else 1_000))
    train_steps = args.train_steps or (2 if args.quick else (100 if gpu else 8))
    if args.quick:
        args.workers = 0

    torch.manual_seed(0)
    reference = build_model(WRN, 10, 3)
    weights = {k: v.clone() for k, v in reference.state_dict().items()}
    n = max(eval_images, (train_steps + 1) * 128)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    images_hwc = images.permute(0, 2, 3, 1).contiguous().numpy()

    def fresh(runtime: Runtime | None = None):
        model = build_model(WRN, 10, 3)
        model.load_state_dict(weights)
        if runtime is None:
            return model.to(device)
        return prepare_model(model, runtime, (3, 32, 32))

    dtype = resolve_precision(args.precision, device)
    variants = [("ours", Runtime(device, dtype, channels_last=gpu or dtype is not None, progress=False))]
    if args.compile:
        variants.append(("ours+compile", Runtime(device, dtype, channels_last=gpu or dtype is not None,
                                                 progress=False, compile=True)))

    rows = []
    print(f"benchmark on {device} ({torch.cuda.get_device_name(device) if gpu else platform.processor() or 'cpu'}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; WRN-40-2, 3x32x32; eval on "
          f"{eval_images} images, training {train_steps} steps of 128", flush=True)
    ev = plain_eval(fresh(), images_hwc[:eval_images], labels[:eval_images].numpy(), device, args.workers)
    tr = plain_train(fresh(), images_hwc, labels.numpy(), device, args.workers, train_steps)
    rows.append({"path": "plain fp32 eager + DataLoader", "precision": "fp32", "eval_img_s": ev, "train_img_s": tr})
    print(f"  plain: eval {ev:.0f} img/s, train {tr:.0f} img/s", flush=True)
    for name, runtime in variants:
        ev = ours_eval(fresh(runtime), images[:eval_images], runtime, resolve_eval_batch_size(args.eval_batch, device))
        tr = ours_train(fresh(runtime), images, labels, runtime, train_steps)
        rows.append({"path": name, "precision": runtime.precision, "eval_img_s": ev, "train_img_s": tr})
        print(f"  {name}: eval {ev:.0f} img/s, train {tr:.0f} img/s", flush=True)

    base = rows[0]
    for r in rows:
        r["eval_speedup"] = r["eval_img_s"] / base["eval_img_s"]
        r["train_speedup"] = r["train_img_s"] / base["train_img_s"]
        r["epoch_s_cifar10"] = CIFAR_TRAIN / r["train_img_s"]
        r["full_eval_s"] = FULL_EVAL / r["eval_img_s"]
        r["device"] = str(device)
        r["threads"] = torch.get_num_threads()
    protocol = protocol_seconds(2_000 if args.quick else 10_000, 400 if args.quick else 2_000)

    print()
    print(f"{'path':<32}{'precision':>10}{'eval img/s':>12}{'x':>7}{'train img/s':>13}{'x':>7}"
          f"{'epoch (50k) s':>15}{'full eval s':>13}")
    for r in rows:
        print(f"{r['path']:<32}{r['precision']:>10}{r['eval_img_s']:>12.0f}{r['eval_speedup']:>7.2f}"
              f"{r['train_img_s']:>13.0f}{r['train_speedup']:>7.2f}{r['epoch_s_cifar10']:>15.1f}{r['full_eval_s']:>13.2f}")
    print(f"\nepoch (50k) and full eval (10,000 ID + 6 x 2,000 OOD) are "
          f"{'measured rates scaled to those sizes' if not gpu else 'from the measured rates'}.")
    print(f"paper protocol from score vectors (6 sets x 10 draws of 2,000 vs 10,000 ID): {protocol:.2f} s "
          f"(scoring the 22,000 images once takes {rows[-1]['full_eval_s']:.2f} s on our path)")

    out = Path(args.out) if args.out else Path("outputs/bench") / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    columns = ["path", "precision", "device", "threads", "eval_img_s", "eval_speedup", "train_img_s", "train_speedup",
               "epoch_s_cifar10", "full_eval_s"]
    with open(out / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"wrote {out / 'bench.csv'}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
