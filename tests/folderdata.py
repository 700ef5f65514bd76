"""Small generated ImageFolder trees for the dataset=folder tests (random PNGs written with PIL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("cat", "dog", "emu")


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_folder(root: Path, classes=CLASSES, n_train: int = 6, n_test: int = 2, seed: int = 0,
                nested: bool = True) -> Path:
    """root/train/<class>/... and root/test/<class>/...: images of varying sizes (some grey), each class with
    its own brightness; with `nested`, the last training image of a class lies one folder deeper."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            for i in range(n):
                h, w = 20 + (i % 4) * 5, 24 + (i % 3) * 7
                shape = (h, w) if i % 5 == 4 else (h, w, 3)
                array = (rng.random(shape) * 80 + c * 60).astype(np.uint8)
                sub = "deeper/" if nested and split == "train" and i == n - 1 else ""
                write_png(root / split / name / f"{sub}{i:03d}.png", array)
    return root
