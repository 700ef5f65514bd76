"""Folders of image files as image sets (LSUN-Crop, LSUN-Resize, iSUN, Textures, Places365, any user folder),
decoded once and cached on disk.

Every image file under the folder (any depth, any size, RGB or grey) is converted to the ID channel count,
resized so its shorter side is the ID size and centre-cropped (`files.decode_image`). The decoded uint8
array is saved as `<cache_dir>/<name>-<C>x<S>x<S>-<key>.npy`, where the key hashes the folder's absolute
path, the target shape and the list of files with their sizes and modification times: a second run reads
the array back instead of decoding again; adding, removing or changing a file, or asking for another
shape, decodes afresh. cache_dir=null turns the cache off. A cache that cannot be written only costs speed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from energy_cli.data import files
from energy_cli.data.images import ImageSet
from energy_cli.errors import UserError
from energy_cli.fileio import atomic_write_bytes, file_part

log = logging.getLogger(__name__)

CACHE_VERSION = 1   # bump when decoding changes, so older caches are not reused
CHUNK = 256         # files per decoding task


def cache_key(root: Path, paths: list[Path], shape: tuple[int, int, int]) -> str:
    """Hash of (cache version, absolute folder, target shape, every file's relative path, size and mtime)."""
    h = hashlib.sha256(f"{CACHE_VERSION}\n{root.resolve()}\n{tuple(shape)}\n".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_file(cache_dir: str | Path, name: str, shape: tuple[int, int, int], key: str) -> Path:
    safe = file_part(name, empty="folder")
    c, s, _ = shape
    return Path(cache_dir).expanduser() / f"{safe}-{c}x{s}x{s}-{key}.npy"


def decode_all(paths: list[Path], shape: tuple[int, int, int], name: str, progress: bool
               ) -> tuple[torch.Tensor, list[tuple[Path, str]]]:
    """Decode `paths` in chunks on a few threads (PIL releases the GIL while decoding). Returns the
    images in the order of `paths` (unreadable files left out) and the [(path, reason)] of those."""
    from tqdm.auto import tqdm

    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    workers = max(1, min(8, os.cpu_count() or 1, len(chunks)))
    parts, failed = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(paths), desc=f"decoding {name}", unit="img", disable=not progress, leave=False) as bar:
        for images, _, bad in pool.map(lambda chunk: files.load_image_files(chunk, shape, name), chunks):
            parts.append(images.images)
            failed += bad
            bar.update(len(images) + len(bad))
    images = torch.cat(parts) if parts else torch.zeros((0, *shape), dtype=torch.uint8)
    return images, failed


def _read_cache(path: Path, shape: tuple[int, int, int]) -> torch.Tensor | None:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a damaged cache file is decoded again and rewritten
        return None
    if array.dtype != np.uint8 or array.ndim != 4 or tuple(array.shape[1:]) != tuple(shape):
        return None
    return torch.from_numpy(array)


def _write_cache(path: Path, images: torch.Tensor) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, images.numpy())
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        log.warning(f"could not write the image cache {path} ({exc.strerror or exc}); the images will be "
                    "decoded again next time (set cache_dir= to a writable folder)")


def load_folder(root: str | Path, name: str, shape: tuple[int, int, int], cache_dir: str | Path | None,
                progress: bool = False, what: str = "") -> ImageSet:
    """Every image under `root` as a uint8 ImageSet of `shape`, via the on-disk cache when it is current.
    `what` ends the error lines (e.g. where to get the dataset)."""
    root = Path(root).expanduser()
    tail = f"; {what}" if what else ""
    if not root.exists():
        raise UserError(f"{name}: folder {root} not found{tail}")
    paths = files.list_images(root)
    if not paths:
        suffixes = ", ".join(sorted(files.IMAGE_SUFFIXES))
        raise UserError(f"{name}: no image files ({suffixes}) under {root}{tail}")
    target = None
    if cache_dir not in (None, "", "null", "none"):
        target = cache_file(cache_dir, name, shape, cache_key(root if root.is_dir() else root.parent, paths, shape))
        cached = _read_cache(target, shape)
        if cached is not None:
            return ImageSet(name, cached)
    images, failed = decode_all(paths, shape, name, progress)
    if len(images) == 0:
        raise UserError(f"{name}: none of the {len(paths)} image files under {root} could be read "
                        f"(first: {failed[0][0]}: {failed[0][1]}){tail}")
    if failed:
        log.warning(f"{name}: skipped {len(failed)} of {len(paths)} files that could not be read "
                    f"(first: {failed[0][0]}: {failed[0][1]})")
    note = ""
    if target is not None:
        _write_cache(target, images)
        note = f"; cached in {target}"
    log.info(f"{name}: decoded {len(images)} images from {root} to {shape[0]}x{shape[1]}x{shape[2]}{note}")
    return ImageSet(name, images)


def load_folder_native(root: str | Path, name: str, channels: int, progress: bool = False,
                       what: str = "") -> list[ImageSet]:
    """Every image under `root` at its stored size (only the channel count converted), one ImageSet per
    image size (H, W), sizes in the order they first appear and images in file order within each. Not cached:
    nothing is decoded to a common shape. Unreadable files are skipped with a warning, as in load_folder."""
    from tqdm.auto import tqdm

    root = Path(root).expanduser()
    tail = f"; {what}" if what else ""
    if not root.exists():
        raise UserError(f"{name}: folder {root} not found{tail}")
    paths = files.list_images(root)
    if not paths:
        raise UserError(f"{name}: no image files ({', '.join(sorted(files.IMAGE_SUFFIXES))}) under {root}{tail}")
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    failed: list[tuple[Path, str]] = []
    for path in tqdm(paths, desc=f"decoding {name}", unit="img", disable=not progress, leave=False):
        try:
            image = files.decode_native(path, channels)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
            failed.append((path, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        groups.setdefault(tuple(image.shape[1:]), []).append(image)
    if not groups:
        raise UserError(f"{name}: none of the {len(paths)} image files under {root} could be read "
                        f"(first: {failed[0][0]}: {failed[0][1]}){tail}")
    if failed:
        log.warning(f"{name}: skipped {len(failed)} of {len(paths)} files that could not be read "
                    f"(first: {failed[0][0]}: {failed[0][1]})")
    sizes = ", ".join(f"{len(g)} at {h}x{w}" for (h, w), g in groups.items())
    log.info(f"{name}: decoded {sum(len(g) for g in groups.values())} images from {root} at their stored size ({sizes})")
    return [ImageSet(name, torch.stack(g)) for g in groups.values()]
