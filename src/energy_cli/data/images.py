"""The in-memory image set every data source produces, and shape adaptation between sets.

An `ImageSet` is a uint8 tensor of images (N x C x H x W, values 0..255) with optional integer labels.
Sources (embedded, synthetic, files on disk) build one; the engine moves it to the compute device once
and batches, augments and normalises it there. A dataset too large for memory holds a `streams.LazyImages`
instead of the tensor (same len / shape / dtype / indexing; decoded batch by batch from its files).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, the usual RGB -> grey conversion (PIL's "L" mode uses the same).
LUMA = (0.299, 0.587, 0.114)


@dataclass
class ImageSet:
    """uint8 images (N, C, H, W) and, for labelled sets, int64 labels (N,). `images` is a tensor, or a
    streams.LazyImages for a set streamed from disk (`streamed`)."""

    name: str
    images: torch.Tensor   # or streams.LazyImages
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"{self.name}: images must be a uint8 N x C x H x W tensor, "
                             f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def streamed(self) -> bool:
        """Whether the images stay on disk (a LazyImages) rather than in a tensor."""
        return not isinstance(self.images, torch.Tensor)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.name, self.images[index], labels)


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N,3,H,W) -> uint8 grey (N,1,H,W) with the BT.601 luma weights."""
    weights = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    grey = (images.float() * weights).sum(dim=1, keepdim=True)
    return grey.round_().clamp_(0, 255).to(torch.uint8)


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey <-> RGB: repeat a grey channel, or take the luma of an RGB image."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if channels == 1 and have == 3:
        return to_grey(images)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 square-or-not images so the shorter side is `size`, then centre-crop to size x size.

    Shrinking uses area averaging (each output pixel is the mean of the input pixels it covers);
    enlarging uses bilinear interpolation.
    """
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = images.float()
    if new_h <= h and new_w <= w:
        x = F.interpolate(x, size=(new_h, new_w), mode="area")
    else:
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top:top + size, left:left + size]
    return x.round_().clamp_(0, 255).to(torch.uint8).contiguous()


def adapt(images: torch.Tensor, shape: tuple[int, int, int], chunk: int = 4096) -> torch.Tensor:
    """Bring uint8 images to (channels, size, size) = `shape`: channel conversion, then resize + centre crop."""
    channels, height, width = shape
    if height != width:
        raise ValueError(f"only square ID images are supported, got {height}x{width}")
    if tuple(images.shape[1:]) == tuple(shape):
        return images
    parts = [resize_images(match_channels(images[i:i + chunk], channels), height)
             for i in range(0, len(images), chunk)]
    return torch.cat(parts) if parts else images.new_zeros((0, *shape))
