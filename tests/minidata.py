"""Miniature datasets in exactly the public on-disk formats, for tests (never real data).

Each writer puts a few images under `root` (a data_root) in the layout the public download unpacks to and
returns what it wrote, so tests can compare the readers' output with known pixels:

    cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}   Python 2 pickles
    cifar100/cifar-100-python/{train,test,meta}                             Python 2 pickles
    svhn/test_32x32.mat                                                     MATLAB 5 file, X 32x32x3xN, y Nx1
    LSUN/test/*.jpg  LSUN_resize/LSUN_resize/*.jpg  iSUN/iSUN_patches/*.jpeg  image folders
    dtd/images/<class>/*.jpg  places365/<class>/*.jpg                       larger images, some grey
    300K_random_images.npy                                                  uint8 N x 32 x 32 x 3
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes (SHORT_BINSTRING / BINSTRING), as the CIFAR files have them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
    """A protocol-2 pickle as Python 2 + numpy 1 wrote it: str keys as byte strings, numpy.core globals."""
    import io

    def to_py2(o):
        if isinstance(o, dict):
            return {to_py2(k): to_py2(v) for k, v in o.items()}
        if isinstance(o, str):
            return o.encode("latin1")
        if isinstance(o, list):
            return [to_py2(v) for v in o]
        return o

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(to_py2(obj))
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def images_rgb(n: int, seed: int, size: int = 32) -> np.ndarray:
    """n random uint8 images N x size x size x 3 with some structure (a colour gradient plus noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    ramp = np.linspace(0, 60, size)[None, :, None, None]
    noise = rng.integers(-40, 41, (n, size, size, 3))
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """Five training batches of `per_batch` images and a test batch. Returns x_train/y_train/x_test/y_test
    with x as N x 3 x 32 x 32 (what the reader must return)."""
    folder = Path(root) / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for b in range(1, 7):
        n = per_batch if b <= 5 else n_test
        x = images_rgb(n, seed * 10 + b).transpose(0, 3, 1, 2)            # N, 3, 32, 32
        y = [int(v) for v in rng.integers(0, 10, n)]
        name = f"data_batch_{b}" if b <= 5 else "test_batch"
        batch = {"batch_label": f"batch {b}", "labels": y, "data": x.reshape(n, 3072),
                 "filenames": [f"img_{b}_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(py2_pickle(batch))
        xs.append(x)
        ys.append(np.array(y))
    (folder / "batches.meta").write_bytes(py2_pickle({"label_names": [f"class{i}" for i in range(10)],
                                                      "num_cases_per_batch": per_batch, "num_vis": 3072}))
    return {"x_train": np.concatenate(xs[:5]), "y_train": np.concatenate(ys[:5]), "x_test": xs[5], "y_test": ys[5]}


def write_cifar100(root: Path, n_train: int = 120, n_test: int = 40, seed: int = 1) -> dict[str, np.ndarray]:
    folder = Path(root) / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        x = images_rgb(n, seed * 10 + len(name)).transpose(0, 3, 1, 2)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        batch = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": name, "fine_labels": fine,
                 "coarse_labels": [v // 5 for v in fine], "data": x.reshape(n, 3072)}
        (folder / name).write_bytes(py2_pickle(batch))
        out[f"x_{name}"], out[f"y_{name}"] = x, np.array(fine)
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": [f"f{i}" for i in range(100)],
                                              "coarse_label_names": [f"c{i}" for i in range(20)]}))
    return out


def write_svhn(root: Path, n: int = 30, seed: int = 2) -> np.ndarray:
    """svhn/test_32x32.mat with X 32 x 32 x 3 x n and y n x 1 (10 = digit 0). Returns X as N x 3 x 32 x 32."""
    from scipy.io import savemat

    folder = Path(root) / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    x = images_rgb(n, seed)                                             # N, 32, 32, 3
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)           # 1..10, 10 = "0"
    savemat(folder / "test_32x32.mat", {"X": np.ascontiguousarray(x.transpose(1, 2, 3, 0)), "y": y})
    return x.transpose(0, 3, 1, 2)


def write_images(folder: Path, n: int, size: tuple[int, int], seed: int, suffix: str = ".jpg",
                 grey_every: int = 0) -> list[Path]:
    """n image files of size (width, height) in `folder`; every `grey_every`-th one grey ("L" mode)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        array = np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(array)
        if grey_every and i % grey_every == 0:
            img = img.convert("L")
        path = folder / f"{i:05d}{suffix}"
        img.save(path)
        paths.append(path)
    return paths


FOLDER_SETS = {   # OOD set -> (files' folder under data_root, image size (w, h), suffix, grey every)
    "lsun_c": ("LSUN/test", (36, 36), ".jpg", 0),
    "lsun_r": ("LSUN_resize/LSUN_resize", (32, 32), ".jpg", 0),
    "isun": ("iSUN/iSUN_patches", (32, 32), ".jpeg", 0),
    "textures": ("dtd/images/banded", (64, 48), ".jpg", 4),
    "places365": ("places365/abbey", (48, 48), ".jpg", 5),
}


def write_folder_sets(root: Path, n: int = 30) -> dict[str, list[Path]]:
    """The five folder OOD sets, `n` images each (Textures and Places365 split over two class folders)."""
    out = {}
    for i, (name, (sub, size, suffix, grey)) in enumerate(FOLDER_SETS.items()):
        if name in ("textures", "places365"):
            first = write_images(Path(root) / sub, n // 2, size, seed=100 + i, suffix=suffix, grey_every=grey)
            other = Path(root) / sub.replace("banded", "woven").replace("abbey", "beach")
            out[name] = first + write_images(other, n - n // 2, size, seed=200 + i, suffix=suffix, grey_every=grey)
        else:
            out[name] = write_images(Path(root) / sub, n, size, seed=100 + i, suffix=suffix, grey_every=grey)
    return out


def write_tinyimages(root: Path, n: int = 64, seed: int = 3, name: str = "300K_random_images.npy") -> np.ndarray:
    """The 300K random images format: uint8 n x 32 x 32 x 3 in one .npy file."""
    x = images_rgb(n, seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    np.save(Path(root) / name, x)
    return x


def write_all(root: Path, n_ood: int = 30) -> dict[str, object]:
    """Every dataset above under `root`."""
    return {"cifar10": write_cifar10(root), "cifar100": write_cifar100(root), "svhn": write_svhn(root, n_ood),
            "folders": write_folder_sets(root, n_ood), "tinyimages": write_tinyimages(root)}
