"""Synthetic OOD test sets, generated at whatever shape the ID data has (1x8x8, 3x32x32, ...).

Pixel values are drawn in [0, 1] and stored as uint8 (x 255). Deterministic in `seed`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from energy_cli.data.images import ImageSet


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round_().to(torch.uint8)


def gaussian(n: int, shape: tuple[int, int, int], seed: int) -> ImageSet:
    """Each pixel ~ clip(0.5 + 0.25 * N(0, 1), 0, 1), independently."""
    g = torch.Generator().manual_seed(seed)
    return ImageSet("gaussian", _to_uint8(0.5 + 0.25 * torch.randn((n, *shape), generator=g)))


def uniform(n: int, shape: tuple[int, int, int], seed: int) -> ImageSet:
    """Each pixel ~ U[0, 1], independently."""
    g = torch.Generator().manual_seed(seed + 1)
    return ImageSet("uniform", _to_uint8(torch.rand((n, *shape), generator=g)))


def rademacher(n: int, shape: tuple[int, int, int], seed: int) -> ImageSet:
    """Each pixel is 0 or 1 with probability 1/2."""
    g = torch.Generator().manual_seed(seed + 2)
    return ImageSet("rademacher", _to_uint8(torch.randint(0, 2, (n, *shape), generator=g).float()))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N x C x H x W floats (kernel radius 3 sigma, reflect padding)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blobs(n: int, shape: tuple[int, int, int], seed: int) -> ImageSet:
    """Blobs: Bernoulli(0.7) pixels at 32x32 (or larger), Gaussian blur (sigma 1 per 32 pixels),
    values below 0.75 set to 0, then area-resized to the ID size."""
    channels, size, _ = shape
    res = max(size, 32)
    g = torch.Generator().manual_seed(seed + 3)
    x = torch.bernoulli(torch.full((n, channels, res, res), 0.7), generator=g)
    x = gaussian_blur(x, sigma=res / 32)
    x = torch.where(x < 0.75, torch.zeros_like(x), x)
    if res != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return ImageSet("blobs", _to_uint8(x))
