"""Image files on disk -> uint8 tensors: listing image trees and decoding files of any size, RGB or grey.

Each image is converted to the target channel count (grey = BT.601 luma), resized so its shorter side
is the target size (area averaging when shrinking) and centre-cropped to a square. Unreadable files are
reported back, never fatal here; callers decide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from energy_cli.data.images import ImageSet, match_channels, resize_images

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def list_images(root: Path) -> list[Path]:
    """Every image file under `root` (recursively, by suffix), in sorted order; `root` may be one file."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def decode_native(path: Path, channels: int) -> torch.Tensor:
    """One image file -> uint8 tensor (channels, H, W) at its stored size (grey = BT.601 luma, or a grey
    image repeated to RGB). Raises OSError/ValueError if unreadable."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        array = np.asarray(img, dtype=np.uint8)
    x = torch.from_numpy(array.copy())
    x = x[None, None] if x.dim() == 2 else x.permute(2, 0, 1)[None]
    return match_channels(x, channels)[0]


def decode_image(path: Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """One image file -> uint8 tensor of `shape` (channels, size, size): decode_native, then the shorter side
    resized to `size` and centre-cropped. Raises OSError/ValueError if unreadable."""
    channels, size, _ = shape
    return resize_images(decode_native(path, channels)[None], size)[0]


def load_image_files(paths: Sequence[Path], shape: tuple[int, int, int], name: str = "images",
                     progress: bool = False) -> tuple[ImageSet, list[Path], list[tuple[Path, str]]]:
    """Decode `paths` into one ImageSet of `shape`. Returns (images, the paths that decoded, [(path, reason)]
    for the files that could not be read)."""
    from tqdm.auto import tqdm

    decoded, ok, failed = [], [], []
    for path in tqdm(paths, desc=f"decoding {name}", unit="img", disable=not progress, leave=False):
        try:
            decoded.append(decode_image(path, shape))
            ok.append(Path(path))
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
            failed.append((Path(path), f"{type(exc).__name__}: {exc}".splitlines()[0]))
    images = torch.stack(decoded) if decoded else torch.zeros((0, *shape), dtype=torch.uint8)
    return ImageSet(name, images), ok, failed


def expand_paths(items: Iterable[str | Path]) -> list[Path]:
    """Files and folders -> the image files they name (folders recursively), duplicates removed, order kept."""
    out: list[Path] = []
    for item in items:
        out += list_images(Path(item))
    return list(dict.fromkeys(out))
