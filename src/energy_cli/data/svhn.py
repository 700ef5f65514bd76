"""SVHN's test split (an OOD test set) from the public MATLAB file <data_root>/svhn/test_32x32.mat.

The file holds `X`, 32 x 32 x 3 x N uint8 (height, width, channel, image), and `y`, N x 1 labels where
10 stands for the digit 0. Only the images are needed for OOD detection; the labels are read on request.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from energy_cli.data import catalog
from energy_cli.data.images import ImageSet
from energy_cli.errors import UserError


def read_svhn_mat(path: Path, labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(images N x 3 x 32 x 32 uint8, labels N int64 with 10 -> 0, or None). Malformed files -> UserError."""
    from scipy.io import loadmat

    refetch = f"delete it and download {catalog.SOURCES['svhn'].url} again (or add download=true)"
    try:
        mat = loadmat(str(path), variable_names=["X", "y"] if labels else ["X"])
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for damaged .mat files
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise UserError(f"{path} is not a readable SVHN .mat file ({type(exc).__name__}: {reason}); it may be "
                        f"truncated or corrupt: {refetch}") from None
    x = mat.get("X")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[2] != 3:
        got = x.shape if isinstance(x, np.ndarray) else "nothing"
        raise UserError(f"{path} is not an SVHN file: expected 'X' of shape H x W x 3 x N, got {got}; {refetch}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number) or x.size and (x.min() < 0 or x.max() > 255):
            raise UserError(f"{path}: 'X' must hold pixel values 0..255, got {x.dtype}; {refetch}")
        x = x.astype(np.uint8)
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    y = None
    if labels:
        raw = mat.get("y")
        if not isinstance(raw, np.ndarray) or raw.size != images.shape[0]:
            raise UserError(f"{path}: expected {images.shape[0]} labels in 'y'; {refetch}")
        y = raw.reshape(-1).astype(np.int64) % 10
    return images, y


def load_svhn_test(data_root: str | Path, download: bool = False) -> ImageSet:
    """The SVHN test images (26,032 in the public file) as a uint8 ImageSet."""
    path = catalog.locate("svhn", data_root, download)
    images, _ = read_svhn_mat(path)
    return ImageSet("svhn", torch.from_numpy(images))
