"""The embedded default: scikit-learn's digits (ID) and patches of its sample photos (outliers, OOD).

Everything here ships with scikit-learn, so every command runs offline.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from energy_cli.data.images import ImageSet, match_channels

DIGITS_TEST_FRACTION = 0.2


def load_digits_split(test_fraction: float = DIGITS_TEST_FRACTION) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 8x8 digits as uint8 (values 0..16 scaled to 0..255), with a fixed stratified split.

    The split does not depend on `seed` (random_state=0), so every run and every seed sees the same
    test set: 1,437 training and 360 test images at the default fraction.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # N,1,8,8
    labels = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=0
    )
    return (ImageSet("digits", torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
            ImageSet("digits", torch.from_numpy(x_te), torch.from_numpy(y_te)))


@functools.lru_cache(maxsize=4)
def sample_photo(photo: str) -> torch.Tensor:
    """A scikit-learn sample photo as a uint8 3 x H x W tensor (decoded once per process)."""
    from sklearn.datasets import load_sample_image

    return torch.from_numpy(np.array(load_sample_image(photo), copy=True)).permute(2, 0, 1).contiguous()


def photo_patches(photo: str, n: int, shape: tuple[int, int, int], seed: int,
                  min_side: int = 8, max_side: int = 96) -> torch.Tensor:
    """`n` random square crops of a scikit-learn sample photo ("china.jpg" or "flower.jpg").

    Each crop has a random side in [min_side, max_side] pixels and a random position; it is converted to
    the target channel count (grey = BT.601 luma) and area-resized to the target size. Deterministic in `seed`.
    """
    channels, size, _ = shape
    image = match_channels(sample_photo(photo)[None], channels)[0].float()
    height, width = image.shape[-2:]
    max_side = min(max_side, height, width)
    g = torch.Generator().manual_seed(seed)
    sides = torch.randint(min_side, max_side + 1, (n,), generator=g)
    tops = (torch.rand(n, generator=g) * (height - sides + 1)).long()
    lefts = (torch.rand(n, generator=g) * (width - sides + 1)).long()
    out = torch.empty((n, channels, size, size), dtype=torch.uint8)
    for side in sides.unique().tolist():  # one batched crop + resize per crop size
        idx = (sides == side).nonzero().flatten()
        rows = tops[idx, None] + torch.arange(side)  # k, side
        cols = lefts[idx, None] + torch.arange(side)
        crops = image[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)  # k, C, side, side
        resized = F.interpolate(crops, size=(size, size), mode="area" if side >= size else "bilinear")
        out[idx] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def china_patches(n: int, shape: tuple[int, int, int], seed: int) -> ImageSet:
    """Auxiliary outliers for fine-tuning: patches of china.jpg."""
    return ImageSet("china_patches", photo_patches("china.jpg", n, shape, seed))


def flower_patches(n: int, shape: tuple[int, int, int], seed: int) -> ImageSet:
    """A test OOD set from a different photo than the training outliers: patches of flower.jpg."""
    return ImageSet("flower_patches", photo_patches("flower.jpg", n, shape, seed + 1))
