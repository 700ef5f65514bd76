"""Image sets that stay on disk: decoded file by file, batch by batch, by DataLoader workers.

A `LazyImages` stands where an ImageSet holds its uint8 tensor when a dataset is too large to decode into
memory (`dataset.stream`). It has the tensor's surface that the rest of the code reads (len, shape, dtype,
dim, indexing by an index tensor -> another LazyImages), plus `load()` (materialise as a tensor) and
`batches(index_chunks)` (one uint8 (n, C, S, S) tensor per chunk, decoded by a DataLoader). Every file is
decoded by `files.decode_image`, the function the in-memory path decodes with, so both paths give
bit-identical images. A file that cannot be read stops the run with one line naming it.

Which path a dataset takes (`choose_stream`): stream=true / false as given; stream=auto streams when the
decoded uint8 bytes (N x C x S x S over train + test) exceed STREAM_SHARE of the available memory (host
MemAvailable, and on CUDA also the free device memory, since the in-memory loop keeps the images there).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from energy_cli.data import files
from energy_cli.errors import UserError

STREAM_SHARE = 0.5         # stream=auto streams when the decoded images need more than this share of memory
STATS_SAMPLES = 50_000     # images the auto mean / std are measured on (a seeded subset when more)
STATS_CHUNK = 1024         # images per chunk when measuring


class _FileDataset(torch.utils.data.Dataset):
    """Index i -> (uint8 image of `shape`, 0) or, when the file cannot be read, (zeros, 1)."""

    def __init__(self, paths: Sequence[Path], shape: tuple[int, int, int]):
        self.paths, self.shape = list(paths), tuple(shape)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return files.decode_image(self.paths[i], self.shape), 0   # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - PIL raises many types; the main process names the file
            return torch.zeros(self.shape, dtype=torch.uint8), 1


def default_workers() -> int:
    """DataLoader workers for dataset.workers=auto: min(4, the CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus))


@dataclass
class LazyImages:
    """uint8 images (N, C, S, S) that live in files: `paths[i]` decodes to image i at `image_shape`."""

    paths: list[Path]
    image_shape: tuple[int, int, int]
    workers: int = 0
    pin_memory: bool = False

    dtype = torch.uint8
    device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), *self.image_shape))

    def dim(self) -> int:
        return 4

    def __getitem__(self, index: torch.Tensor | slice | Sequence[int]) -> "LazyImages":
        """The images at `index` (an index tensor, a list or a slice), still on disk."""
        if isinstance(index, slice):
            chosen = self.paths[index]
        else:
            idx = index.tolist() if isinstance(index, torch.Tensor) else list(index)
            chosen = [self.paths[i] for i in idx]
        return LazyImages(chosen, self.image_shape, self.workers, self.pin_memory)

    def batches(self, chunks: Iterable[Sequence[int]]) -> Iterator[torch.Tensor]:
        """One uint8 tensor (len(chunk), C, S, S) per index chunk, in order, decoded by `workers` DataLoader
        workers (0: in this process), pinned when `pin_memory`. Raises UserError naming the first unreadable file."""
        chunks = [list(c) for c in chunks]
        if not chunks:
            return
        # its own generator: creating the loader's iterator draws a seed, never from the global torch RNG
        # (which holds the model's initialisation and dropout: streaming must not shift them)
        loader = torch.utils.data.DataLoader(_FileDataset(self.paths, self.image_shape), batch_sampler=chunks,
                                             num_workers=self.workers, pin_memory=self.pin_memory,
                                             generator=torch.Generator().manual_seed(0))
        for (images, bad), chunk in zip(loader, chunks):
            if bool(bad.any()):
                path = self.paths[chunk[int(bad.nonzero()[0])]]
                reason = _reason(path, self.image_shape)
                raise UserError(f"cannot read the image file {path} ({reason}); remove it or replace it")
            yield images

    def range_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive batches of `batch_size` images covering the set in order (the last may be shorter)."""
        n = len(self)
        return self.batches(range(s, min(s + batch_size, n)) for s in range(0, n, batch_size))

    def load(self) -> torch.Tensor:
        """Every image decoded into one uint8 tensor (N, C, S, S)."""
        parts = list(self.range_batches(256))
        return torch.cat(parts) if parts else torch.zeros((0, *self.image_shape), dtype=torch.uint8)

    def fingerprint(self) -> str:
        """sha256 of the image shape and every file's path, size and modification time (what its pixels
        depend on), standing in for the pixels' bytes."""
        h = hashlib.sha256(f"lazy/1\n{tuple(self.image_shape)}\n".encode())
        for p in self.paths:
            st = Path(p).stat()
            h.update(f"{Path(p).resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def _reason(path: Path, shape: tuple[int, int, int]) -> str:
    try:
        files.decode_image(path, shape)
        return "it failed once while decoding"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


def pixels(images: "torch.Tensor | LazyImages", index: torch.Tensor) -> torch.Tensor:
    """The uint8 images at `index` as a tensor (decoded from disk for a LazyImages)."""
    return images[index].load() if isinstance(images, LazyImages) else images[index]


def channel_stats(images: "torch.Tensor | LazyImages", seed: int, limit: int = STATS_SAMPLES
                  ) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the pixels scaled to [0, 1], over every pixel of (a seeded draw of at most
    `limit` of) the images: mean_c = sum x / n, std_c = sqrt(sum x^2 / n - mean_c^2) (the population std).
    The sums are exact integers, so the answer does not depend on the order or the path the images come by."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to measure")
    index = torch.arange(n)
    if n > limit:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:limit].sort().values
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.int64)
    squares = torch.zeros(c, dtype=torch.int64)
    chunks = [index[i:i + STATS_CHUNK] for i in range(0, len(index), STATS_CHUNK)]
    if isinstance(images, LazyImages):
        parts: Iterable[torch.Tensor] = images.batches(ch.tolist() for ch in chunks)
    else:
        parts = (images[ch] for ch in chunks)
    for part in parts:
        x = part.to(torch.int64)
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = len(index) * images.shape[2] * images.shape[3]
    mean = total.double() / count
    var = (squares.double() / count - mean * mean).clamp_min(0)
    return (mean / 255).tolist(), (var.sqrt() / 255).tolist()


def available_memory(cuda_device: torch.device | None = None) -> tuple[int, str]:
    """(bytes, where) of the memory the decoded images would compete for: the host's MemAvailable (Linux
    /proc/meminfo; else free physical pages), and the free memory of `cuda_device` when it is smaller."""
    host, where = None, "host memory available"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            host = 1 << 62
    if cuda_device is not None and cuda_device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(cuda_device)
        if free < host:
            return int(free), f"free memory on {cuda_device}"
    return int(host), where


def choose_stream(setting: object, nbytes: int, available: int, where: str = "memory available"
                  ) -> tuple[bool, str]:
    """(stream?, why) for dataset.stream = true | false | auto and `nbytes` of decoded images."""
    need = f"{nbytes / 2**30:.2f} GiB decoded"
    if setting is True or str(setting).lower() == "true":
        return True, f"dataset.stream=true ({need})"
    if setting is False or str(setting).lower() == "false":
        return False, f"dataset.stream=false ({need})"
    have = f"{available / 2**30:.2f} GiB {where}"
    if nbytes > STREAM_SHARE * available:
        return True, f"stream=auto: {need} > {STREAM_SHARE:.0%} of {have}"
    return False, f"stream=auto: {need} <= {STREAM_SHARE:.0%} of {have}"
