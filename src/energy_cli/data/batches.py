"""Batches on the compute device: normalisation and augmentation of whole uint8 batches, no per-image Python.

The uint8 images are moved to the device once; each step gathers a batch by index, augments it
(random crop with zero padding, horizontal flip) and normalises it, all as batched tensor operations.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F


class Normalizer:
    """uint8 (N,C,H,W) -> float (x / 255 - mean) / std, per channel, on the images' device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"):
        self.mean_list = [float(m) for m in mean]
        self.std_list = [float(s) for s in std]
        self.mean = torch.tensor(self.mean_list, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(self.std_list, device=device).view(1, -1, 1, 1) * 255.0

    def to(self, device: torch.device | str) -> "Normalizer":
        return Normalizer(self.mean_list, self.std_list, device)

    def __call__(self, images: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
        # the layout changes on the 1-byte images, and the elementwise ops below keep it: no float copy
        images = images.contiguous(memory_format=memory_format) if images.dim() == 4 else images
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=memory_format)


def random_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the original size from the image zero-padded by `pad` pixels on each side, and a
    horizontal flip with probability 1/2; independent per image, done for the whole batch at once."""
    if pad <= 0 and not flip:
        return images
    n, c, h, w = images.shape
    dev = images.device
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # n,1,h,1
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # n,1,1,w
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chans = torch.arange(c, device=dev)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, device=dev, generator=generator) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images


def index_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering 0..n (the last one may be shorter)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
