"""Images stored in one .npy array: the 300K random images (auxiliary outliers) and any user file in the
same format (`outliers=npy path=...`).

The 300K file is uint8 N x 32 x 32 x 3 (image, height, width, channel). It is memory-mapped, not read:
fine-tuning gathers only the batches it draws, so the 900 MB file costs no memory up front. Accepted shapes:
N x H x W x 3 (RGB), N x H x W x 1 or N x H x W (grey), uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from energy_cli.data.images import ImageSet
from energy_cli.errors import UserError


def load_npy_images(path: str | Path, name: str, hint: str = "") -> ImageSet:
    """A .npy file of uint8 images -> ImageSet (N, C, H, W), a copy-on-write memory map of the file (no
    copy is made; the file is never written). `hint` ends the error lines (where to get the file)."""
    path = Path(path).expanduser()
    tail = f"; {hint}" if hint else ""
    if path.is_dir():
        raise UserError(f"{path} is a folder, expected a .npy file of images (for a folder use outliers=folder)")
    if not path.is_file():
        raise UserError(f"{path} not found{tail or '; pass the path of a .npy file of uint8 N x H x W x 3 images'}")
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - truncated headers/data, pickled objects, not an .npy file at all
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise UserError(f"{path} is not a readable .npy file ({type(exc).__name__}: {reason}); it may be truncated "
                        f"or corrupt{tail}") from None
    if array.ndim == 3:
        array = array[..., None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] not in (1, 3) or array.shape[0] == 0:
        raise UserError(f"{path} holds {array.dtype} {tuple(array.shape)}; expected uint8 images N x H x W x 3 "
                        f"(or N x H x W for grey){tail}")
    images = torch.from_numpy(array).permute(0, 3, 1, 2)   # a view: nothing is read until a batch is gathered
    return ImageSet(name, images)
