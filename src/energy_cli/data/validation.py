"""Synthetic validation OOD sets for tuning detector settings (odin.tune, mahalanobis.tune), built from ID
training images so that no OOD test set is ever used to choose a setting.

They follow the validation distributions of the Outlier Exposure / energy-OOD evaluation code (which builds
them from the other CIFAR's test set); here the source is a seeded draw of the ID training images, and every
transform works on uint8 images of any size and channel count. Pixel values are in [0, 1] below.

    mean_pairs   (a + b) / 2                 for random pairs of images a != b
    geomean      sqrt(a * b)                 for random pairs
    jigsaw       the four quadrants permuted (top-left <-> bottom-right, top-right <-> bottom-left, each flipped
                 upside down)
    speckle      clip(x + x * N(0, 1), 0, 1)
    pixelate     box-downsampled to 20% of the side, then upsampled back with nearest neighbours
    rgb_shift    channels rotated (G, B, R) with the first one mirrored left-right (RGB images only)
    invert       1 - x on every channel but the first (grey images: on their only channel)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from energy_cli.data.images import ImageSet
from energy_cli.data.streams import pixels

KINDS = ("mean_pairs", "geomean", "jigsaw", "speckle", "pixelate", "rgb_shift", "invert")


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.double() / 255.0


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _partners(n: int, generator: torch.Generator) -> torch.Tensor:
    """For each i, a random j != i (n >= 2)."""
    offset = torch.randint(1, n, (n,), generator=generator)
    return (torch.arange(n) + offset) % n


def mean_pairs(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x = _unit(images)
    return _uint8((x + x[_partners(len(x), generator)]) / 2)


def geomean(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x = _unit(images)
    return _uint8(torch.sqrt(x * x[_partners(len(x), generator)]))


def jigsaw(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    h, w = images.shape[-2] // 2, images.shape[-1] // 2
    out = images.clone()
    tl, tr = images[..., :h, :w], images[..., :h, w:2 * w]
    bl, br = images[..., h:2 * h, :w], images[..., h:2 * h, w:2 * w]
    out[..., :h, :w], out[..., h:2 * h, w:2 * w] = br.flip(-2), tl.flip(-2)
    out[..., :h, w:2 * w], out[..., h:2 * h, :w] = bl.flip(-2), tr.flip(-2)
    return out


def speckle(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x = _unit(images)
    return _uint8(x + x * torch.randn(x.shape, generator=generator, dtype=x.dtype))


def pixelate(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    h, w = images.shape[-2:]
    small = F.interpolate(_unit(images), size=(max(1, round(h * 0.2)), max(1, round(w * 0.2))), mode="area")
    return _uint8(F.interpolate(small, size=(h, w), mode="nearest"))


def rgb_shift(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    if images.shape[1] != 3:
        raise ValueError("rgb_shift needs RGB images")
    return torch.cat([images[:, 1:2].flip(-1), images[:, 2:3], images[:, 0:1]], dim=1)


def invert(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    out = images.clone()
    first = 1 if images.shape[1] > 1 else 0
    out[:, first:] = 255 - images[:, first:]
    return out


TRANSFORMS = {"mean_pairs": mean_pairs, "geomean": geomean, "jigsaw": jigsaw, "speckle": speckle,
              "pixelate": pixelate, "rgb_shift": rgb_shift, "invert": invert}


def synthetic_validation_sets(train: ImageSet, n: int, seed: int) -> list[ImageSet]:
    """Every validation kind that applies to the images' channel count (rgb_shift needs 3), `n` images each
    (at most the training set's size), each from its own seeded draw of the training images. Names are
    `val_<kind>`. A streamed training set decodes only the drawn images."""
    if len(train) < 2:
        raise ValueError("synthetic validation sets need at least two training images")
    out = []
    for i, kind in enumerate(KINDS):
        if kind == "rgb_shift" and train.shape[0] != 3:
            continue
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        index = torch.randperm(len(train), generator=g)[: min(int(n), len(train))]
        out.append(ImageSet(f"val_{kind}", TRANSFORMS[kind](pixels(train.images, index), g)))
    return out
