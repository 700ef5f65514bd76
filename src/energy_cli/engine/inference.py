"""Batched inference: normalised device batches of uint8 images, logits (and penultimate features) in eval
mode, accuracy."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from energy_cli.data.batches import Normalizer, index_batches
from energy_cli.data.images import ImageSet
from energy_cli.data.streams import LazyImages
from energy_cli.engine.runtime import Runtime, is_compiled
from energy_cli.ood.scores import free_energy


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the body, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def device_batches(images: torch.Tensor | LazyImages, normalizer: Normalizer, runtime: Runtime, batch_size: int,
                   pad_to_batch: bool = False) -> Iterator[tuple[torch.Tensor, int]]:
    """Normalised batches of uint8 images on the device, in the runtime's memory format (pinned, non-blocking
    copies from the CPU to a GPU). Yields (x, n): n real rows; with pad_to_batch a short last batch is
    zero-padded to batch_size, so that a compiled model sees one shape and does not recompile. `images` may be
    a LazyImages (a set streamed from disk): its batches come decoded from DataLoader workers."""
    norm = normalizer.to(runtime.device)
    pin = runtime.device.type == "cuda" and images.device.type == "cpu"
    pad = pad_to_batch and len(images) > batch_size
    if isinstance(images, LazyImages):
        source = images.range_batches(batch_size)
        pin = pin and not images.pin_memory
    else:
        source = (images[sl] for sl in index_batches(len(images), batch_size))
    for batch in source:
        n = len(batch)
        if pad and n < batch_size:
            batch = torch.cat([batch, batch.new_zeros((batch_size - n, *batch.shape[1:]))])
        if pin:
            batch = batch.pin_memory()
        yield norm(batch.to(runtime.device, non_blocking=True), runtime.memory_format), n


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor | LazyImages, normalizer: Normalizer, runtime: Runtime,
            batch_size: int = 1024, features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (fp32, on the CPU) of uint8 images, in eval mode; with features=True also the penultimate
    features. One forward pass per batch; images may live on the CPU, on the device, or on disk (LazyImages)."""
    logits_parts, feat_parts = [], []
    with eval_mode(model):
        for x, n in device_batches(images, normalizer, runtime, batch_size, is_compiled(model) and not features):
            with runtime.autocast():
                if features:
                    logits, feats = model.forward_with_features(x)
                    feat_parts.append(feats[:n].float().to("cpu", non_blocking=True))
                else:
                    logits = model(x)
            logits_parts.append(logits[:n].float().to("cpu", non_blocking=True))
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)
    num_classes = model.fc.out_features
    logits = torch.cat(logits_parts) if logits_parts else torch.zeros((0, num_classes))
    feats = (torch.cat(feat_parts) if feat_parts else torch.zeros((0, model.feature_dim))) if features else None
    return logits, feats


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of argmax predictions equal to the labels."""
    return float((logits.argmax(dim=1) == labels.to(logits.device)).float().mean()) if len(labels) else float("nan")


AUTO_SAMPLES = 10_000   # images of each kind the auto margins are measured on (a seeded subset when more)

def measure_energies(model, images: ImageSet, normalizer: Normalizer, runtime: Runtime, temperature: float,
                     batch_size: int, seed: int) -> torch.Tensor:
    """Free energies E(x) of (a seeded subset of at most AUTO_SAMPLES of) `images`, model in eval mode."""
    data = images.images
    if len(data) > AUTO_SAMPLES:
        data = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:AUTO_SAMPLES]]
    logits, _ = predict(model, data, normalizer, runtime, batch_size)
    return free_energy(logits, temperature)
