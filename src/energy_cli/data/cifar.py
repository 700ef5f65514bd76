"""CIFAR-10 and CIFAR-100 from the python pickle batches of the public download.

Layout: <data_root>/cifar10/cifar-10-batches-py/{data_batch_1..5, test_batch} and
<data_root>/cifar100/cifar-100-python/{train, test}. Each file is a pickled dict with `data` (N x 3072 uint8:
the red, green and blue 32x32 planes of each image, row-major) and `labels` (CIFAR-10) or `fine_labels`
(CIFAR-100). The files were written by Python 2; they are read with a restricted unpickler that accepts
nothing but numpy arrays, lists and strings, so a damaged or foreign file can neither run code nor crash
deep in numpy: every problem ends as one UserError line.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from energy_cli.data import catalog
from energy_cli.data.images import ImageSet
from energy_cli.errors import UserError

FILES = {
    "cifar10": (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"], ["test_batch"]),
    "cifar100": (["train"], ["test"]),
}
LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}

# The only callables a CIFAR pickle needs: numpy's array and dtype reconstruction (under the module
# names numpy 1 and numpy 2 write) and the codec Python 3 uses for bytes in protocol-2 pickles.
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric"}
_NUMPY_GLOBALS = {
    "_reconstruct": np.ndarray((0,)).__reduce__()[0],
    "_frombuffer": np.arange(2).__reduce_ex__(5)[0],
    "scalar": np.float64(0).__reduce__()[0],
    "ndarray": np.ndarray,
    "dtype": np.dtype,
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _NUMPY_MODULES and name in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[name]
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR batch holds")


def _key(d: dict, name: str) -> Any:
    """d[name] for str keys (read with latin1) or bytes keys (pickles written by Python 3)."""
    if name in d:
        return d[name]
    return d.get(name.encode())


def read_batch(path: Path, label_key: str, num_classes: int, refetch: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch -> (images N x 3 x 32 x 32 uint8, labels N int64). `refetch` ends the error lines."""
    if not path.is_file():
        raise UserError(f"{path} is missing; {refetch}")
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, ValueError, ... on damaged files
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise UserError(f"{path} is not a readable CIFAR batch ({type(exc).__name__}: {reason}); it may be "
                        f"truncated or corrupt: {refetch}") from None
    data = _key(batch, "data") if isinstance(batch, dict) else None
    labels = _key(batch, label_key) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path} is not a CIFAR batch: expected 'data' as N x 3072 uint8, got {got}; {refetch}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"{path} is not a CIFAR batch: it holds no integer '{label_key}'; {refetch}") from None
    if labels.shape[0] != data.shape[0]:
        raise UserError(f"{path} is not a CIFAR batch: {data.shape[0]} images but {labels.shape[0]} "
                        f"'{label_key}'; {refetch}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}; "
                        f"is this the right dataset? {refetch}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(name: str, data_root: str | Path, download: bool = False) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 or CIFAR-100 (`name`) as (train, test) uint8 ImageSets."""
    folder = catalog.locate(name, data_root, download)
    src = catalog.SOURCES[name]
    refetch = f"delete {folder} and download {src.url} again (or add download=true)"
    train_files, test_files = FILES[name]
    sets = []
    for split, files in (("train", train_files), ("test", test_files)):
        parts = [read_batch(folder / f, LABEL_KEY[name], NUM_CLASSES[name], refetch) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        sets.append(ImageSet(name, torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)))
    return sets[0], sets[1]
