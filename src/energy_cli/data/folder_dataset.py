"""Your own labelled images as the in-distribution dataset (`dataset=folder dataset.path=DIR`).

DIR holds train/ and test/, each with one sub-folder per class (torchvision's ImageFolder layout):

    DIR/train/<class>/**/<image>     DIR/test/<class>/**/<image>

The classes are the sub-folder names of train/, sorted (Python string order, as ImageFolder); the label of an
image is its class's index. Image files may lie at any depth under their class folder (suffixes as
files.IMAGE_SUFFIXES; sorted paths); files directly in train/ or test/ belong to no class and are ignored with a
warning. test/ may hold a subset of the training classes, never a class train/ lacks. Every image is decoded by
`files.decode_image` (channel conversion, shorter side resized to dataset.image_size, centre crop).

In memory (dataset.stream false, or auto with room to spare) each split is decoded once and cached like the
folder OOD sets (data/folders.py: `<cache_dir>/dataset-<folder>-<split>-<C>x<S>x<S>-<key>.npy`); an unreadable
file is an error there (one line naming it), as it is when a streamed batch reaches it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from energy_cli.data import files, folders
from energy_cli.data.images import ImageSet
from energy_cli.data.streams import LazyImages, available_memory, choose_stream, default_workers
from energy_cli.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass
class Split:
    """One split's image files (sorted within each class, classes in label order) and their labels."""

    root: Path
    paths: list[Path]
    labels: list[int]


@dataclass
class FolderData:
    """The listing of DIR: class names (label = index) and both splits."""

    root: Path
    classes: list[str]
    train: Split
    test: Split


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted((p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _split(split_dir: Path, classes: list[str], label_of: dict[str, int]) -> Split:
    paths: list[Path] = []
    labels: list[int] = []
    loose = [p for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in files.IMAGE_SUFFIXES]
    if loose:
        log.warning(f"dataset.path: ignoring {len(loose)} image files directly in {split_dir} (not in a class folder)")
    for name in classes:
        found = files.list_images(split_dir / name)
        if not found:
            raise UserError(f"dataset.path: the class folder {split_dir / name} holds no image files "
                            f"({', '.join(sorted(files.IMAGE_SUFFIXES))}); remove it or add images")
        paths += found
        labels += [label_of[name]] * len(found)
    return Split(split_dir, paths, labels)


def scan(path: str | Path | None) -> FolderData:
    """List DIR's classes and files; one-line UserErrors for every layout mistake (nothing is decoded here)."""
    if path in (None, "", "null", "none"):
        raise UserError("dataset=folder needs the folder of your images: add dataset.path=DIR "
                        "(DIR/train/<class>/... and DIR/test/<class>/...)")
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset.path={path}: {'not a folder' if root.exists() else 'no such folder'}")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise UserError(f"dataset.path={path} has no {split}/ folder; it needs train/<class>/... and "
                            "test/<class>/... (link or rename a val/ folder as test/)")
    classes = [p.name for p in _class_dirs(root / "train")]
    if len(classes) < 2:
        what = "no class folders" if not classes else f"one class folder ({classes[0]})"
        raise UserError(f"dataset.path={path}: train/ holds {what}; a classifier needs at least two "
                        "(train/<class>/<images>)")
    label_of = {name: i for i, name in enumerate(classes)}
    test_classes = [p.name for p in _class_dirs(root / "test")]
    if not test_classes:
        raise UserError(f"dataset.path={path}: test/ holds no class folders (test/<class>/<images>)")
    unknown = [c for c in test_classes if c not in label_of]
    if unknown:
        raise UserError(f"dataset.path={path}: test/ has class {unknown[0]!r}, which train/ lacks "
                        f"({len(unknown)} such class{'es' if len(unknown) > 1 else ''}); test classes must be training classes")
    train = _split(root / "train", classes, label_of)
    test = _split(root / "test", test_classes, label_of)
    for split in (train, test):   # a set whose every file is unreadable fails here, before the command starts
        _probe(split, path)
    return FolderData(root, classes, train, test)


def _probe(split: Split, path: object) -> None:
    """Decode the split's first file: a folder of files that are not images fails before anything runs."""
    try:
        files.decode_native(split.paths[0], 1)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise UserError(f"dataset.path={path}: cannot read the image file {split.paths[0]} ({reason})") from None


def _decoded(split: Split, name: str, shape: tuple[int, int, int], cache_dir: object, progress: bool) -> torch.Tensor:
    """Every file of the split decoded (through the cache); an unreadable file is an error."""
    target = None
    if cache_dir not in (None, "", "null", "none"):
        key = folders.cache_key(split.root, split.paths, shape)
        target = folders.cache_file(str(cache_dir), name, shape, key)
        cached = folders._read_cache(target, shape)  # noqa: SLF001 - the folder sets' cache format
        if cached is not None and len(cached) == len(split.paths):
            return cached
    images, failed = folders.decode_all(split.paths, shape, name, progress)
    if failed:
        raise UserError(f"dataset.path: {len(failed)} of {len(split.paths)} files in {split.root} cannot be read "
                        f"(first: {failed[0][0]}: {failed[0][1]}); remove or replace them")
    if target is not None:
        folders._write_cache(target, images)  # noqa: SLF001
    log.info(f"{name}: decoded {len(images)} images to {shape[0]}x{shape[1]}x{shape[2]}"
             + (f"; cached in {target}" if target is not None else ""))
    return images


def load(dataset: Mapping[str, Any], cache_dir: str | None = None, progress: bool = False,
         cuda_device: torch.device | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) of dataset=folder (the dataset's keys: path, channels, image_size, stream, workers): in
    memory (decoded once, cached under `cache_dir`), or streamed from disk (LazyImages) as `stream` decides."""
    d = dataset
    data = scan(d.get("path"))
    shape = (int(d["channels"]), int(d["image_size"]), int(d["image_size"]))
    n = len(data.train.paths) + len(data.test.paths)
    available, where = available_memory(cuda_device)
    stream, why = choose_stream(d.get("stream", "auto"), n * shape[0] * shape[1] * shape[2], available, where)
    log.info(f"dataset {data.root}: {len(data.classes)} classes, {len(data.train.paths)} train / "
             f"{len(data.test.paths)} test images at {shape[0]}x{shape[1]}x{shape[2]}; "
             f"{'streaming from disk' if stream else 'in memory'} ({why})")
    labels = [torch.tensor(s.labels, dtype=torch.int64) for s in (data.train, data.test)]
    if stream:
        workers = d.get("workers", "auto")
        workers = default_workers() if str(workers) == "auto" else int(workers)
        pin = cuda_device is not None and cuda_device.type == "cuda"
        sets = [LazyImages(s.paths, shape, workers, pin) for s in (data.train, data.test)]
        return ImageSet("folder", sets[0], labels[0]), ImageSet("folder", sets[1], labels[1])  # type: ignore[arg-type]
    base = f"dataset-{data.root.resolve().name}"
    images = [_decoded(s, f"{base}-{split}", shape, cache_dir, progress)
              for s, split in ((data.train, "train"), (data.test, "test"))]
    return ImageSet("folder", images[0], labels[0]), ImageSet("folder", images[1], labels[1])
