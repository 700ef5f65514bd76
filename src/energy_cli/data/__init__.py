"""Data sources by name: in-distribution datasets, auxiliary outliers and OOD test sets.

Every source returns an `ImageSet` of uint8 tensors; OOD sets and outliers come back already adapted to
the ID images' shape (channels, size), so any OOD set works against any ID dataset. The sources take a
DataSettings (data/settings.py: plain values a command builds from its config), never the config itself.
Add a source by writing a module with a loader and registering it in the tables below.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from energy_cli.config.overrides import as_list
from energy_cli.data import (
    catalog,
    cifar,
    embedded,
    folder_dataset,
    folders,
    svhn,
    synthetic,
    tinyimages,
)
from energy_cli.data.images import ImageSet, adapt
from energy_cli.data.settings import DataSettings
from energy_cli.errors import UserError

Shape = tuple[int, int, int]

# name -> settings -> (train, test)
ID_DATASETS: dict[str, Callable[[DataSettings], tuple[ImageSet, ImageSet]]] = {
    "digits": lambda s: embedded.load_digits_split(s.dataset.get("test_fraction", 0.2)),
    "cifar10": lambda s: cifar.load_cifar("cifar10", s.data_root, s.download),
    "cifar100": lambda s: cifar.load_cifar("cifar100", s.data_root, s.download),
    "folder": lambda s: folder_dataset.load(s.dataset, s.cache_dir, s.progress, _cuda_device(s.device)),
}

# name -> (settings, shape) -> outliers, already at `shape`
OUTLIERS: dict[str, Callable[[DataSettings, Shape], ImageSet]] = {
    "china_patches": lambda s, shape: embedded.china_patches(int(s.outliers["n"]), shape, s.seed),
    "tinyimages300k": lambda s, shape: _tinyimages300k(s),
    "npy": lambda s, shape: tinyimages.load_npy_images(_outlier_path(s, "FILE.npy"), "npy"),
    "folder": lambda s, shape: folders.load_folder(_outlier_path(s, "FOLDER"), "folder", shape, s.cache_dir,
                                                   s.progress),
}

# name -> (settings, shape) -> OOD test set (adapted to `shape` by load_ood)
OOD_SETS: dict[str, Callable[[DataSettings, Shape], ImageSet]] = {
    "flower_patches": lambda s, shape: embedded.flower_patches(_ood_size(s), shape, s.seed),
    "gaussian": lambda s, shape: synthetic.gaussian(_ood_size(s), shape, s.seed),
    "uniform": lambda s, shape: synthetic.uniform(_ood_size(s), shape, s.seed),
    "rademacher": lambda s, shape: synthetic.rademacher(_ood_size(s), shape, s.seed),
    "blobs": lambda s, shape: synthetic.blobs(_ood_size(s), shape, s.seed),
    "svhn": lambda s, shape: svhn.load_svhn_test(s.data_root, s.download),
    "textures": lambda s, shape: _public_folder("textures", s, shape),
    "places365": lambda s, shape: _public_folder("places365", s, shape),
    "lsun_c": lambda s, shape: _public_folder("lsun_c", s, shape),
    "lsun_r": lambda s, shape: _public_folder("lsun_r", s, shape),
    "isun": lambda s, shape: _public_folder("isun", s, shape),
}

# `folder:PATH` names any folder (or single image file) as an OOD set, e.g. ood=[folder:/data/my_images]
FOLDER_PREFIX = "folder:"

# the folder sets that ood_resize=native feeds at their stored size (the paper's code does not resize them)
NATIVE_SIZE_SETS = ("lsun_c", "lsun_r", "isun")

# alternative names users may type
OOD_ALIASES: dict[str, str] = {"lsun": "lsun_c"}


def _ood_size(s: DataSettings) -> int:
    """Number of images in each generated OOD set (embedded and synthetic)."""
    return int(s.dataset.get("ood_size", 10000))


def _public_folder(key: str, s: DataSettings, shape: Shape) -> ImageSet:
    """One of the public folder sets (catalog key), decoded to `shape` through the on-disk cache."""
    root = catalog.locate(key, s.data_root, s.download)
    src = catalog.SOURCES[key]
    return folders.load_folder(root, key, shape, s.cache_dir, s.progress, what=f"get it from {src.url}")


def _outlier_path(s: DataSettings, what: str) -> str:
    path = s.outliers.get("path")
    if path in (None, ""):
        raise UserError(f"outliers={s.outliers.get('name')} needs the path of its data: add path={what}")
    return str(path)


def _tinyimages300k(s: DataSettings) -> ImageSet:
    """The 300K random images: outliers.path when given, else <data_root>/300K_random_images.npy."""
    path = s.outliers.get("path")
    src = catalog.SOURCES["tinyimages300k"]
    if path in (None, ""):
        path = catalog.locate("tinyimages300k", s.data_root)
    return tinyimages.load_npy_images(path, "tinyimages300k", hint=f"get it from {src.url}")


def id_shape(s: DataSettings) -> Shape:
    """(channels, size, size) of the ID images."""
    return s.shape


def _cuda_device(device: str):
    """The CUDA device the run uses (DataSettings.device is already resolved), else None."""
    import torch

    return torch.device(device) if device.startswith("cuda") else None


def class_count(dataset: Mapping[str, Any]) -> int:
    """The number of classes, decided once before a command runs: dataset.num_classes as given, or for
    dataset=folder with num_classes=auto (or null) the number of its class folders. Layout mistakes and a
    given number that does not match the folders fail here (one line)."""
    given = dataset.get("num_classes")
    auto = given is None or str(given) == "auto"
    if dataset.get("name") == "folder":
        found = len(folder_dataset.scan(dataset.get("path")).classes)
        if not auto and int(given) != found:  # type: ignore[arg-type]
            raise UserError(f"dataset.num_classes={given}, but {dataset.get('path')}/train/ holds {found} class "
                            "folders; drop the override (auto counts them)")
        return found
    if auto:
        raise UserError(f"dataset.num_classes={given}: only dataset=folder counts its classes; give a number")
    return int(given)  # type: ignore[arg-type]


def normalizer_stats(s: DataSettings, train: ImageSet) -> tuple[list[float], list[float], str]:
    """(mean, std, how) for training: dataset.mean / dataset.std as given, or, where `auto`, measured per channel
    from the training images (streams.channel_stats: pixels in [0, 1], a seeded draw of at most 50,000 images)."""
    from energy_cli.data.streams import STATS_SAMPLES, channel_stats

    mean, std = s.dataset["mean"], s.dataset["std"]
    if str(mean) != "auto" and str(std) != "auto":
        return [float(m) for m in mean], [float(s) for s in std], "given"
    measured_mean, measured_std = channel_stats(train.images, s.seed)
    if any(s <= 0 for s in measured_std) and str(std) == "auto":
        raise UserError("dataset.std=auto: every training pixel of a channel has the same value (std 0); "
                        "give dataset.std=[...] by hand")
    out_mean = measured_mean if str(mean) == "auto" else [float(m) for m in mean]
    out_std = measured_std if str(std) == "auto" else [float(s) for s in std]
    return out_mean, out_std, f"measured on {min(len(train), STATS_SAMPLES)} training images"


def load_id(s: DataSettings) -> tuple[ImageSet, ImageSet]:
    """The ID dataset's (train, test) sets."""
    name = s.dataset["name"]
    if name not in ID_DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(ID_DATASETS))}")
    return ID_DATASETS[name](s)


def load_outliers(s: DataSettings, shape: Shape) -> ImageSet:
    """The auxiliary outliers for fine-tuning (`outliers=`), at the ID shape."""
    name = s.outliers.get("name")
    if name not in OUTLIERS:
        raise UserError(f"unknown outliers '{name}'; choose one of: {', '.join(sorted(OUTLIERS))}")
    out = OUTLIERS[name](s, shape)
    return ImageSet(out.name, adapt(out.images, shape))


def canonical_ood_name(name: str) -> str:
    return OOD_ALIASES.get(name, name)


def resolve_ood_names(requested: str | Iterable[str] | None, dataset: Mapping[str, Any]) -> list[str]:
    """The `ood` key -> validated list of set names; `all` expands to the dataset's benchmark list."""

    names = list(dataset["ood"]) if requested is None else as_list(requested)
    expanded: list[str] = []
    for name in names:
        if name == "all":
            expanded += list(dataset["benchmark_ood"])
        else:
            expanded.append(canonical_ood_name(name))
    unknown = [n for n in expanded if not is_known_ood(n)]
    if unknown:
        raise UserError(f"unknown OOD set '{unknown[0]}'; choose from: {', '.join(known_ood_names())} or all")
    if not expanded:
        raise UserError("ood is empty; name at least one OOD set, e.g. --ood gaussian")
    return list(dict.fromkeys(expanded))


def known_ood_names() -> list[str]:
    return sorted(OOD_SETS) + sorted(OOD_ALIASES) + [FOLDER_PREFIX + "PATH"]


def is_known_ood(name: str) -> bool:
    return name in OOD_SETS or (name.startswith(FOLDER_PREFIX) and len(name) > len(FOLDER_PREFIX))


def load_ood(name: str, s: DataSettings, shape: Shape) -> ImageSet:
    """One OOD test set, adapted to the ID shape."""
    name = canonical_ood_name(name)
    if name.startswith(FOLDER_PREFIX) and is_known_ood(name):
        out = folders.load_folder(name[len(FOLDER_PREFIX):], name, shape, s.cache_dir, s.progress)
    elif name in OOD_SETS:
        out = OOD_SETS[name](s, shape)
    else:
        raise UserError(f"unknown OOD set '{name}'; choose from: {', '.join(known_ood_names())}")
    return ImageSet(name, adapt(out.images, shape))


def load_ood_parts(name: str, s: DataSettings, shape: Shape) -> list[ImageSet]:
    """One OOD test set as a list of ImageSets to score one after the other. With ood_resize=native, LSUN-C,
    LSUN-R and iSUN keep their stored image size (channels converted only), one ImageSet per size; otherwise
    (ood_resize=resize, the default, and every other set) one ImageSet at the ID shape, as load_ood."""
    name = canonical_ood_name(name)
    if s.ood_resize == "native" and name in NATIVE_SIZE_SETS:
        root = catalog.locate(name, s.data_root, s.download)
        return folders.load_folder_native(root, name, shape[0], s.progress,
                                          what=f"get it from {catalog.SOURCES[name].url}")
    return [load_ood(name, s, shape)]
