"""Benchmark: energy-ood's training and evaluation path against a plain PyTorch loop, same model, weights and images,
and both against the machine's measured matrix-product peak.

    make bench                               # = python scripts/bench.py: modest sizes, a few minutes on 2 CPU cores
    python scripts/bench.py --full           # the issue's sizes: 3,072 training images, 16,000 eval images
    python scripts/bench.py --cifar          # CIFAR-sized: one 50,000-image epoch, 10,000 ID + 6 x 2,000 OOD (GPU)
    python scripts/bench.py --compile        # also measure torch.compile (opt-in `compile=true`)
    python scripts/bench.py --int8           # also measure eval with precision=int8 (a CPU; no training row)
    python scripts/bench.py --quick          # tiny sizes: checks that the script works (used by the tests)
    python scripts/bench.py --full --rounds 3  # every path 3 times, interleaved: medians, and the speed-ups' range

The plain loop is how the paper's code runs: fp32 eager, a DataLoader over per-image torchvision transforms
(PIL conversion, random crop with 4-pixel padding and flip for training; ToTensor + Normalize), batch 128 for
training and 200 for evaluation, and the paper's dropout in the WRN blocks (F.dropout; `--plain-dropout ours`
gives the plain loop our CPU dropout instead, as benches before 2026-12-02 did). It runs in a process of its own,
started fresh, with the C library's default allocator (`--plain-malloc ours` gives it ours). Ours is the code the
commands run, in the bench's process, with the allocator setting the commands make (engine.memory) and every `auto`
choice this machine's probe made (engine.probe: precision, channels_last, eval batch size, threads): `engine.fit`
(uint8 tensors on the device, batched on-device augmentation, no host sync inside an epoch) and
`detectors.score_images` with eval's default scores on the BatchNorm-folded model eval runs (engine.fusion). Both
use WideResNet-40-2 on 3x32x32 inputs with the same initial weights and the same uint8 images.

Also measured: the matrix-product peak of the device (fp32, and bf16 where it is native, i.e. faster than fp32), and
the fraction of it each path reaches (model FLOPs per image counted by torch's FlopCounterMode: about 0.655 GFLOP
forward, 1.96 GFLOP forward + backward for WRN-40-2); and the paper's protocol (10 draws of 2,000 OOD scores for
each of 6 sets against 10,000 ID scores) from precomputed score vectors. bench.csv goes into the run's folder
(default outputs/bench/<date>_<time>/) and the table is printed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from energy_cli.commands.evaluate import int8_model  # noqa: E402
from energy_cli.data.batches import Normalizer  # noqa: E402
from energy_cli.data.images import ImageSet  # noqa: E402
from energy_cli.detectors import build_detectors  # noqa: E402
from energy_cli.detectors.scoring import score_images  # noqa: E402
from energy_cli.engine import memory, probe, winograd  # noqa: E402
from energy_cli.engine.fusion import fold_batchnorm  # noqa: E402
from energy_cli.engine.loop import (  # noqa: E402
    LoopState,
    TrainSpec,
    fit,
    make_optimizer,
    make_scheduler,
)
from energy_cli.engine.runtime import (  # noqa: E402
    Runtime,
    default_threads,
    prepare_model,
    resolve_channels_last,
    resolve_cuda_graphs,
    resolve_device,
    resolve_eval_batch_size,
    resolve_precision,
    resolve_winograd,
    set_threads,
)
from energy_cli.models import build_model  # noqa: E402
from energy_cli.ood.metrics import draw_indices, metrics_over_draws  # noqa: E402

MEAN = (0.4914, 0.4824, 0.4467)
STD = (0.2471, 0.2435, 0.2616)
WRN = {"name": "wrn40_2", "depth": 40, "widen_factor": 2, "dropout": 0.3}
CIFAR_TRAIN, FULL_EVAL = 50_000, 10_000 + 6 * 2_000
# (eval images, training steps of 128) per size; the GPU's default is larger so that its runs are long enough
SIZES = {"quick": (64, 2), "cpu": (1_000, 8), "gpu": (20_000, 100), "full": (16_000, 24),
         "cifar": (FULL_EVAL, -(-CIFAR_TRAIN // 128))}


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


def paper_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """The dropout of the paper's WideResNet blocks."""
    return F.dropout(x, p=p, training=training)


def with_paper_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with F.dropout in every WRN block instead of our CPU dropout (models.wrn.dropout), as the paper's
    code runs it; the same function in eval mode."""
    for m in model.modules():
        if hasattr(m, "dropout_fn"):   # a WRN block
            m.dropout_fn = paper_dropout
    return model


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


# The plain loop runs in a process of its own, started fresh (spawn) with the C library's default allocator, as the
# paper's scripts run; our path runs in the bench's process with the settings the commands make (engine.memory).
_plain_state: dict = {}


def bench_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bench's n seeded uint8 images (N,3,32,32) and labels: the same in every process."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 10, (n,), generator=g)


def initial_model() -> torch.nn.Module:
    """The bench's WRN-40-2 with its seeded initial weights: the same in every process."""
    torch.manual_seed(0)
    return build_model(WRN, 10, 3)


def wrn_with(weights: dict) -> torch.nn.Module:
    """A fresh WRN-40-2 holding `weights`."""
    model = build_model(WRN, 10, 3)
    model.load_state_dict(weights)
    return model


def plain_measure(kind: str, setup: dict) -> float:
    """Images/s of the plain loop for `kind` (eval or train), in the plain loop's own process."""
    if not _plain_state:
        if setup["malloc"] == "ours":
            memory.retain_freed_memory()
        torch.set_num_threads(setup["threads"])
        images, labels = bench_images(setup["n"])
        _plain_state.update(hwc=images.permute(0, 2, 3, 1).contiguous().numpy(), labels=labels.numpy(),
                            weights=initial_model().state_dict())
    device = torch.device(setup["device"])
    model = wrn_with(_plain_state["weights"])
    model = (with_paper_dropout(model) if setup["dropout"] == "paper" else model).to(device)
    hwc, labels = _plain_state["hwc"], _plain_state["labels"]
    if kind == "eval":
        n = setup["eval_images"]
        return plain_eval(model, hwc[:n], labels[:n], device, setup["workers"])
    return plain_train(model, hwc, labels, device, setup["workers"], setup["train_steps"])


# --------------------------------------------------------------------------- our path (what the commands run)

def ours_eval(model, images: torch.Tensor, runtime: Runtime, batch: int) -> float:
    """What `energy-ood eval` runs per set: one pass for the default scores (msp, energy), on the folded model."""
    norm = Normalizer(MEAN, STD)
    detectors = build_detectors(["msp", "energy"], model, norm, runtime, batch_size=batch)
    score_images(model, images[:batch], detectors, norm, runtime, batch)  # warm-up (and compilation)
    sync(runtime.device)
    start = time.perf_counter()
    score_images(model, images, detectors, norm, runtime, batch)
    return len(images) / (time.perf_counter() - start)


def ours_train(model, images: torch.Tensor, labels: torch.Tensor, runtime: Runtime, steps: int) -> float:
    """Training images/s of our loop. With CUDA graphs the rate is that of the second of two epochs: the first
    epoch of a run also pays, once, for the warm-up steps and the capture (printed)."""
    norm = Normalizer(MEAN, STD)
    tiny_test = ImageSet("test", images[:8], labels[:8])

    def run(n_steps: int, epochs: int = 1) -> list[float]:
        """Seconds of each epoch of one fit of n_steps steps per epoch."""
        train = ImageSet("train", images[: n_steps * 128], labels[: n_steps * 128])
        spec = TrainSpec(train=train, test=tiny_test, normalizer=norm,
                         objective=lambda logits, y, n_in: F.cross_entropy(logits, y),
                         epochs=epochs, batch_size=128, seed=0, crop_pad=4, flip=True, description="bench")
        opt = make_optimizer(model, 0.1, 0.9, 5e-4, True)
        sched = make_scheduler(opt, n_steps * epochs, 0.1)
        start = time.perf_counter()
        state = fit(model, spec, runtime, opt, sched, LoopState(), save=lambda state: None)
        sync(runtime.device)
        return [r["seconds"] for r in state.history] if epochs > 1 else [time.perf_counter() - start]

    run(2)  # warm-up (and compilation)
    if not runtime.cuda_graphs:
        return steps * 128 / run(steps)[0]
    first, second = run(steps, epochs=2)
    print(f"  (CUDA graphs: the first epoch took {first - second:.2f} s more, once per run, for its warm-up steps "
          "and the capture)", flush=True)
    return steps * 128 / second


def protocol_seconds(n_id: int = 10_000, n_ood: int = 2_000, sets: int = 6, draws: int = 10) -> float:
    """Seconds for the metrics of `draws` draws of `n_ood` scores per set, from precomputed score vectors."""
    rng = np.random.default_rng(0)
    id_scores = rng.normal(1, 1, n_id)
    start = time.perf_counter()
    for s in range(sets):
        ood_scores = rng.normal(0, 1, 5 * n_ood)
        metrics_over_draws(id_scores, ood_scores, draw_indices(len(ood_scores), n_ood, draws, seed=s))
    return time.perf_counter() - start


# --------------------------------------------------------------------------- peak and FLOPs

def model_gflop(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
    """GFLOP per image of one forward pass (eval mode) and of forward + backward (train mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    try:
        model.eval()
        with FlopCounterMode(display=False) as count, torch.no_grad():
            model(torch.zeros((1, *shape)))
        forward = count.get_total_flops() / 1e9
        model.train()
        with FlopCounterMode(display=False) as count:
            model(torch.zeros((2, *shape))).sum().backward()
        model.zero_grad(set_to_none=True)
        return forward, count.get_total_flops() / 2e9
    finally:
        model.train(was)


def matmul_peaks(device: torch.device, quick: bool) -> tuple[float, float | None]:
    """(fp32, bf16) GFLOP/s of square matrix products on the device; bf16 is None where it is not native
    (not faster than fp32: emulated)."""
    if device.type == "cuda":
        n, repeat, rounds = (1024, 2, 2) if quick else (8192, 10, 3)
    else:
        n, repeat, rounds = (256, 1, 2) if quick else (1024, 1, 5)
    fp32 = probe.matmul_gflops(torch.float32, n, rounds, device, repeat)
    try:
        bf16 = probe.matmul_gflops(torch.bfloat16, n if device.type == "cuda" else n // 2, max(1, rounds - 2),
                                   device, repeat)
    except RuntimeError:
        return fp32, None
    return fp32, (bf16 if bf16 > fp32 else None)


# --------------------------------------------------------------------------- main

def our_runtime(device: torch.device, precision: str, compile: bool, eval_batch: str,
                graphs: str = "auto") -> tuple[Runtime, probe.Choices]:
    """The Runtime the commands would build here with every other key at auto (probe included)."""
    if device.type == "cpu":
        memory.retain_freed_memory()
    choices = probe.machine_choices(default_threads(), probe.mode_from("auto"), device)
    if device.type == "cpu":
        set_threads("auto", choices)
    dtype = resolve_precision(precision, device, choices)
    runtime = Runtime(device, dtype, channels_last=resolve_channels_last("auto", device, dtype, choices),
                      progress=False, compile=compile,
                      eval_batch_size=resolve_eval_batch_size(eval_batch, device, choices),
                      cuda_graphs=resolve_cuda_graphs(graphs, device, False),
                      winograd=resolve_winograd("auto", device, dtype, False, compile, choices),
                      winograd_train=resolve_winograd("auto", device, dtype, False, compile, choices, training=True))
    return runtime, choices


def fmt(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


COLUMNS = ["path", "precision", "channels_last", "winograd", "eval_batch", "device", "threads", "eval_images", "train_images",
           "rounds", "eval_img_s", "eval_speedup", "eval_speedup_min", "eval_speedup_max", "train_img_s",
           "train_speedup", "train_speedup_min", "train_speedup_max", "eval_gflops", "train_gflops",
           "peak_fp32_gflops", "peak_bf16_gflops", "eval_frac_fp32_peak", "eval_frac_bf16_peak",
           "train_frac_fp32_peak", "train_frac_bf16_peak", "epoch_s_cifar10", "full_eval_s"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="our path's precision: auto | fp32 | bf16")
    p.add_argument("--compile", action="store_true", help="also measure our path with torch.compile")
    p.add_argument("--int8", action="store_true", help="also measure eval with precision=int8 (CPU only)")
    p.add_argument("--eager-steps-too", action="store_true",
                   help="on a GPU, also measure training without CUDA graphs (cuda_graphs=false)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    size.add_argument("--full", action="store_true", help="the issue's sizes: 24 training steps of 128, 16,000 "
                                                          "eval images (10,000 ID + 3 x 2,000 OOD)")
    size.add_argument("--cifar", action="store_true", help="CIFAR sizes: a 50,000-image epoch (391 steps), "
                                                           "22,000 eval images (10,000 ID + 6 x 2,000 OOD)")
    p.add_argument("--eval-images", type=int, default=None, help="images per eval measurement")
    p.add_argument("--train-steps", type=int, default=None, help="training steps (batch 128) per measurement")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop (paper: 2-4)")
    p.add_argument("--eval-batch", default="auto", help="our eval batch size (auto: the probe's choice)")
    p.add_argument("--plain-dropout", choices=["paper", "ours"], default="paper",
                   help="the plain loop's dropout: paper (F.dropout, default) or ours (models.wrn.dropout)")
    p.add_argument("--plain-malloc", choices=["system", "ours"], default="system",
                   help="the plain loop's allocator: system (the C library's default, as the paper's scripts run) or "
                        "ours (freed memory kept for reuse, engine.memory, as our commands run)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every path this many times, interleaved; report medians (default 1)")
    p.add_argument("--skip-plain", action="store_true", help="measure our path only (speed-ups left empty)")
    p.add_argument("--out", default=None, help="folder for bench.csv (default outputs/bench/<date>_<time>)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds={args.rounds} must be at least 1")

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    size = "quick" if args.quick else "full" if args.full else "cifar" if args.cifar else ("gpu" if gpu else "cpu")
    eval_images = args.eval_images or SIZES[size][0]
    train_steps = args.train_steps or SIZES[size][1]
    if args.quick:
        args.workers = 0

    # (name, (runtime, probe choices)); the eager-steps variant differs in training only, so its eval is ours'
    variants = [("ours", our_runtime(device, args.precision, False, args.eval_batch))]
    if args.eager_steps_too and gpu:
        variants.append(("ours (eager steps)",
                         our_runtime(device, args.precision, False, args.eval_batch, graphs="false")))
    if args.compile:
        variants.append(("ours+compile", our_runtime(device, args.precision, True, args.eval_batch)))
    choices = variants[0][1][1]

    reference = initial_model()
    weights = {k: v.clone() for k, v in reference.state_dict().items()}
    fwd_gflop, train_gflop = model_gflop(reference, (3, 32, 32))
    n = max(eval_images, (train_steps + 1) * 128)
    images, labels = bench_images(n)
    plain_setup = {"n": n, "threads": torch.get_num_threads(), "device": str(device), "dropout": args.plain_dropout,
                   "malloc": args.plain_malloc,
                   "eval_images": eval_images, "train_steps": train_steps, "workers": args.workers}

    def fresh(runtime: Runtime, folded: bool = False):
        model = wrn_with(weights)
        if folded:
            model = fold_batchnorm(model.eval())
            if runtime.winograd:
                winograd.convert(model)
        return prepare_model(model, runtime, (3, 32, 32))

    name = torch.cuda.get_device_name(device) if gpu else (probe.cpu_model() or platform.processor() or "cpu")
    print(f"benchmark on {device} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}; WRN-40-2 "
          f"({fwd_gflop:.3f} GFLOP/image forward, {train_gflop:.3f} forward+backward), 3x32x32; eval on {eval_images} "
          f"images, training {train_steps} steps of 128", flush=True)
    print(f"probe ({choices.source}): bf16 {'yes' if choices.bf16 else 'no'}, channels_last "
          f"{'yes' if choices.channels_last else 'no'}, eval batch {choices.eval_batch_size}, "
          f"threads {choices.threads}, Winograd convolutions in eval {'yes' if choices.winograd else 'no'}, "
          f"in training {'yes' if choices.winograd_train else 'no'}", flush=True)
    peak_fp32, peak_bf16 = matmul_peaks(device, args.quick)
    print(f"matmul peak: fp32 {peak_fp32:.0f} GFLOP/s, bf16 "
          + (f"{peak_bf16:.0f} GFLOP/s" if peak_bf16 else "not native (not faster than fp32)"), flush=True)

    # Each round measures every path once, eval then train, a path and the plain loop next to each other; with
    # several rounds, rates are medians and a speed-up is the median of the rounds' own ratios, so that a slow
    # phase of a shared machine lands on both sides of a ratio.
    plain = "plain fp32 eager + DataLoader" + ("" if args.plain_dropout == "paper" else " (our dropout)") + (
        "" if args.plain_malloc == "system" else " (our allocator)")
    paths = [] if args.skip_plain else [{"path": plain, "precision": "fp32", "channels_last": False,
                                         "winograd": False, "eval_batch": 200}]
    paths += [{"path": name, "precision": runtime.precision, "channels_last": runtime.channels_last,
               "winograd": runtime.winograd or runtime.winograd_train,
               "eval_batch": runtime.eval_batch_size, "runtime": runtime}
              for name, (runtime, _) in variants]
    for path in paths:
        if path["path"] == "ours (eager steps)":
            path["eval_of"] = "ours"
    ours = variants[0][1][0]
    if ours.winograd or ours.winograd_train:   # the same with the direct convolutions, side by side
        runtime = dataclasses.replace(ours, winograd=False, winograd_train=False)
        paths.append({"path": "ours, direct convolutions" + ("" if ours.winograd_train else " (eval only)"),
                      "precision": runtime.precision, "channels_last": runtime.channels_last, "winograd": False,
                      "eval_batch": runtime.eval_batch_size, "runtime": runtime, "eval_only": not ours.winograd_train})
    if args.int8 and not gpu:
        runtime = dataclasses.replace(variants[0][1][0], dtype=None, compile=False, int8=True, winograd=False)
        # what `eval precision=int8` runs: the folded model, calibrated on a seeded draw of training images
        quantized = int8_model(fresh(runtime, folded=True), ImageSet("train", images, labels), Normalizer(MEAN, STD),
                               runtime, seed=0)
        paths.append({"path": "ours int8 (eval only)", "precision": "int8", "channels_last": runtime.channels_last,
                      "eval_batch": runtime.eval_batch_size, "runtime": runtime, "model": quantized})

    def measure(path: dict, kind: str) -> float | None:
        """Images/s of one path for eval or train (None: an eval-only path's training)."""
        runtime = path.get("runtime")
        if runtime is None:   # the plain loop, in its own process
            return plain_process.submit(plain_measure, kind, plain_setup).result()
        if kind == "eval":
            model = path["model"] if "model" in path else fresh(runtime, folded=True)
            return ours_eval(model, images[:eval_images], runtime, runtime.eval_batch_size)
        return None if runtime.int8 or path.get("eval_only") else ours_train(fresh(runtime), images, labels, runtime, train_steps)

    measured: list[dict[str, tuple[float, float | None]]] = []
    plain_process = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    with plain_process:
        for round_ in range(args.rounds):
            evals: dict[str, float | None] = {}
            for r in paths:   # a path with eval_of evaluates exactly as that one: measured once
                evals[r["path"]] = evals[r["eval_of"]] if "eval_of" in r else measure(r, "eval")
            trains = {r["path"]: measure(r, "train") for r in paths}
            rates = {k: (evals[k], trains[k]) for k in evals}
            measured.append(rates)
            said = "; ".join(f"{k}: eval {v[0]:.0f}" + ("" if v[1] is None else f", train {v[1]:.0f}")
                             for k, v in rates.items())
            print(f"  round {round_ + 1}/{args.rounds} (img/s): {said}", flush=True)

    rows = []
    for r in paths:
        row = {k: v for k, v in r.items() if k not in ("runtime", "model", "eval_only")}
        row["eval_img_s"] = statistics.median(m[r["path"]][0] for m in measured)
        trained = measured[0][r["path"]][1] is not None
        row["train_img_s"] = statistics.median(m[r["path"]][1] for m in measured) if trained else None
        row["rounds"] = args.rounds
        for i, kind in enumerate(("eval", "train")):
            ratios = [m[r["path"]][i] / m[plain][i] for m in measured
                      if not args.skip_plain and m[r["path"]][i] is not None]
            row[f"{kind}_speedup"] = statistics.median(ratios) if ratios else None
            row[f"{kind}_speedup_min"] = min(ratios) if ratios else None
            row[f"{kind}_speedup_max"] = max(ratios) if ratios else None
        rows.append(row)
    for r in rows:
        trained = r["train_img_s"] is not None
        r["eval_gflops"] = r["eval_img_s"] * fwd_gflop
        r["train_gflops"] = r["train_img_s"] * train_gflop if trained else None
        r["peak_fp32_gflops"], r["peak_bf16_gflops"] = peak_fp32, peak_bf16
        for kind in ("eval", "train"):
            gflops = r[f"{kind}_gflops"]
            r[f"{kind}_frac_fp32_peak"] = gflops / peak_fp32 if gflops is not None else None
            r[f"{kind}_frac_bf16_peak"] = gflops / peak_bf16 if peak_bf16 and gflops is not None else None
        r["epoch_s_cifar10"] = CIFAR_TRAIN / r["train_img_s"] if trained else None
        r["full_eval_s"] = FULL_EVAL / r["eval_img_s"]
        r["device"] = str(device)
        r["threads"] = torch.get_num_threads()
        r["eval_images"], r["train_images"] = eval_images, train_steps * 128
    protocol = protocol_seconds(2_000 if args.quick else 10_000, 400 if args.quick else 2_000)

    def cell(v, width, spec):
        return f"{'-' if v is None else format(v, spec):>{width}}"

    wide = max(30, *(len(r["path"]) + 2 for r in rows))
    print()
    print(f"{'path':<{wide}}{'prec':>6}{'eval img/s':>11}{'x':>6}{'%peak':>7}{'train img/s':>12}{'x':>6}{'%peak':>7}"
          f"{'epoch(50k) s':>13}{'full eval s':>12}")
    for r in rows:
        bf = r["precision"] == "bf16" and peak_bf16
        peak_e = r["eval_frac_bf16_peak"] if bf else r["eval_frac_fp32_peak"]
        peak_t = r["train_frac_bf16_peak"] if bf else r["train_frac_fp32_peak"]
        percent = (lambda v: None if v is None else 100 * v)
        print(f"{r['path']:<{wide}}{r['precision']:>6}{r['eval_img_s']:>11.0f}{cell(r['eval_speedup'], 6, '.2f')}"
              f"{cell(percent(peak_e), 6, '.1f')}%{cell(r['train_img_s'], 12, '.0f')}"
              f"{cell(r['train_speedup'], 6, '.2f')}{cell(percent(peak_t), 6, '.1f')}%"
              f"{cell(r['epoch_s_cifar10'], 13, '.1f')}{r['full_eval_s']:>12.2f}")
    if args.rounds > 1 and not args.skip_plain:
        for r in rows[1:]:
            spread = [f"{kind} {r[kind + '_speedup_min']:.2f}-{r[kind + '_speedup_max']:.2f}x"
                      for kind in ("eval", "train") if r[f"{kind}_speedup"] is not None]
            print(f"{r['path']}: speed-ups over {args.rounds} rounds: {', '.join(spread)} (the table: medians)")
    print(f"\n%peak: the model's GFLOP/s over the measured matmul peak of its precision; x: against the plain loop. "
          f"epoch (50k) and full eval (10,000 ID + 6 x 2,000 OOD) are the measured rates at "
          f"{'these' if size == 'cifar' else 'the sizes above, scaled to those'} sizes.")
    print(f"paper protocol from score vectors (6 sets x 10 draws of 2,000 vs 10,000 ID): {protocol:.2f} s "
          f"(scoring the 22,000 images once takes {next(r for r in rows if r['path'] == 'ours')['full_eval_s']:.2f} s "
          "on our path)")

    out = Path(args.out) if args.out else Path("outputs/bench") / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: fmt(r.get(k)) for k in COLUMNS})
    print(f"wrote {out / 'bench.csv'}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
