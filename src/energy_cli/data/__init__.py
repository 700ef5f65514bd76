"""Data sources by name: in-distribution datasets, auxiliary outliers and OOD test sets.

Every source returns an `ImageSet` of uint8 tensors; OOD sets and outliers come back already adapted to
the ID images' shape (channels, size), so any OOD set works against any ID dataset.
Add a source by writing a module with a loader and registering it in the tables below.
"""

from __future__ import annotations

from typing import Callable, Iterable

from omegaconf import DictConfig

from energy_cli.config.logs import progress_enabled
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
from energy_cli.errors import UserError

Shape = tuple[int, int, int]

# name -> cfg -> (train, test)
ID_DATASETS: dict[str, Callable[[DictConfig], tuple[ImageSet, ImageSet]]] = {
    "digits": lambda cfg: embedded.load_digits_split(cfg.dataset.get("test_fraction", 0.2)),
    "cifar10": lambda cfg: cifar.load_cifar("cifar10", cfg.data_root, bool(cfg.download)),
    "cifar100": lambda cfg: cifar.load_cifar("cifar100", cfg.data_root, bool(cfg.download)),
    "folder": lambda cfg: folder_dataset.load(cfg, progress_enabled(cfg.progress), _cuda_device(cfg)),
}

# name -> (cfg, shape) -> outliers, already at `shape`
OUTLIERS: dict[str, Callable[[DictConfig, Shape], ImageSet]] = {
    "china_patches": lambda cfg, shape: embedded.china_patches(int(cfg.outliers.n), shape, int(cfg.seed)),
    "tinyimages300k": lambda cfg, shape: _tinyimages300k(cfg),
    "npy": lambda cfg, shape: tinyimages.load_npy_images(_outlier_path(cfg, "FILE.npy"), "npy"),
    "folder": lambda cfg, shape: folders.load_folder(_outlier_path(cfg, "FOLDER"), "folder", shape,
                                                     cfg.get("cache_dir"), progress_enabled(cfg.progress)),
}

# name -> (cfg, shape) -> OOD test set (adapted to `shape` by load_ood)
OOD_SETS: dict[str, Callable[[DictConfig, Shape], ImageSet]] = {
    "flower_patches": lambda cfg, shape: embedded.flower_patches(_ood_size(cfg), shape, int(cfg.seed)),
    "gaussian": lambda cfg, shape: synthetic.gaussian(_ood_size(cfg), shape, int(cfg.seed)),
    "uniform": lambda cfg, shape: synthetic.uniform(_ood_size(cfg), shape, int(cfg.seed)),
    "rademacher": lambda cfg, shape: synthetic.rademacher(_ood_size(cfg), shape, int(cfg.seed)),
    "blobs": lambda cfg, shape: synthetic.blobs(_ood_size(cfg), shape, int(cfg.seed)),
    "svhn": lambda cfg, shape: svhn.load_svhn_test(cfg.data_root, bool(cfg.download)),
    "textures": lambda cfg, shape: _public_folder("textures", cfg, shape),
    "places365": lambda cfg, shape: _public_folder("places365", cfg, shape),
    "lsun_c": lambda cfg, shape: _public_folder("lsun_c", cfg, shape),
    "lsun_r": lambda cfg, shape: _public_folder("lsun_r", cfg, shape),
    "isun": lambda cfg, shape: _public_folder("isun", cfg, shape),
}

# `folder:PATH` names any folder (or single image file) as an OOD set, e.g. ood=[folder:/data/my_images]
FOLDER_PREFIX = "folder:"

# the folder sets that ood_resize=native feeds at their stored size (the paper's code does not resize them)
NATIVE_SIZE_SETS = ("lsun_c", "lsun_r", "isun")

# alternative names users may type
OOD_ALIASES: dict[str, str] = {"lsun": "lsun_c"}


def _ood_size(cfg: DictConfig) -> int:
    """Number of images in each generated OOD set (embedded and synthetic)."""
    return int(cfg.dataset.get("ood_size", 10000))


def _public_folder(key: str, cfg: DictConfig, shape: Shape) -> ImageSet:
    """One of the public folder sets (catalog key), decoded to `shape` through the on-disk cache."""
    root = catalog.locate(key, cfg.data_root, bool(cfg.get("download", False)))
    src = catalog.SOURCES[key]
    return folders.load_folder(root, key, shape, cfg.get("cache_dir"), progress_enabled(cfg.progress),
                               what=f"get it from {src.url}")


def _outlier_path(cfg: DictConfig, what: str) -> str:
    path = cfg.outliers.get("path")
    if path in (None, ""):
        raise UserError(f"outliers={cfg.outliers.name} needs the path of its data: add path={what}")
    return str(path)


def _tinyimages300k(cfg: DictConfig) -> ImageSet:
    """The 300K random images: outliers.path when given, else <data_root>/300K_random_images.npy."""
    path = cfg.outliers.get("path")
    src = catalog.SOURCES["tinyimages300k"]
    if path in (None, ""):
        path = catalog.locate("tinyimages300k", cfg.data_root)
    return tinyimages.load_npy_images(path, "tinyimages300k", hint=f"get it from {src.url}")


def id_shape(cfg: DictConfig) -> Shape:
    """(channels, size, size) of the ID images, from the dataset config."""
    d = cfg.dataset
    return int(d.channels), int(d.image_size), int(d.image_size)


def _cuda_device(cfg: DictConfig):
    """The CUDA device the run will use (cfg.device auto / cuda / cuda:N with CUDA present), else None."""
    import torch

    device = str(cfg.get("device", "auto"))
    if device == "cpu" or not torch.cuda.is_available():
        return None
    return torch.device("cuda" if device == "auto" else device)


def prepare_dataset(cfg: DictConfig) -> None:
    """Fill in what the dataset's folder decides, once, before a command runs: dataset.num_classes=auto
    (or null) becomes the number of class folders of dataset=folder. Layout mistakes fail here (one line)."""
    d = cfg.dataset
    auto = d.get("num_classes") is None or str(d.get("num_classes")) == "auto"
    if d.name == "folder":
        found = len(folder_dataset.scan(d.get("path")).classes)
        if auto:
            d.num_classes = found
        elif int(d.num_classes) != found:
            raise UserError(f"dataset.num_classes={d.num_classes}, but {d.path}/train/ holds {found} class folders; "
                            "drop the override (auto counts them)")
    elif auto:
        raise UserError(f"dataset.num_classes={d.get('num_classes')}: only dataset=folder counts its classes; "
                        f"give a number")


def normalizer_stats(cfg: DictConfig, train: ImageSet) -> tuple[list[float], list[float], str]:
    """(mean, std, how) for training: dataset.mean / dataset.std as given, or, where `auto`, measured per channel
    from the training images (streams.channel_stats: pixels in [0, 1], a seeded draw of at most 50,000 images)."""
    from energy_cli.data.streams import STATS_SAMPLES, channel_stats

    mean, std = cfg.dataset.mean, cfg.dataset.std
    if str(mean) != "auto" and str(std) != "auto":
        return [float(m) for m in mean], [float(s) for s in std], "given"
    measured_mean, measured_std = channel_stats(train.images, int(cfg.seed))
    if any(s <= 0 for s in measured_std) and str(std) == "auto":
        raise UserError("dataset.std=auto: every training pixel of a channel has the same value (std 0); "
                        "give dataset.std=[...] by hand")
    out_mean = measured_mean if str(mean) == "auto" else [float(m) for m in mean]
    out_std = measured_std if str(std) == "auto" else [float(s) for s in std]
    return out_mean, out_std, f"measured on {min(len(train), STATS_SAMPLES)} training images"


def load_id(cfg: DictConfig) -> tuple[ImageSet, ImageSet]:
    """The ID dataset's (train, test) sets."""
    name = cfg.dataset.name
    if name not in ID_DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(ID_DATASETS))}")
    return ID_DATASETS[name](cfg)


def load_outliers(cfg: DictConfig, shape: Shape) -> ImageSet:
    """The auxiliary outliers for fine-tuning (`outliers=`), at the ID shape."""
    name = cfg.outliers.name
    if name not in OUTLIERS:
        raise UserError(f"unknown outliers '{name}'; choose one of: {', '.join(sorted(OUTLIERS))}")
    out = OUTLIERS[name](cfg, shape)
    return ImageSet(out.name, adapt(out.images, shape))


def canonical_ood_name(name: str) -> str:
    return OOD_ALIASES.get(name, name)


def resolve_ood_names(requested: str | Iterable[str] | None, dataset: DictConfig) -> list[str]:
    """The `ood` key -> validated list of set names; `all` expands to the dataset's benchmark list."""

    names = list(dataset.ood) if requested is None else as_list(requested)
    expanded: list[str] = []
    for name in names:
        if name == "all":
            expanded += list(dataset.benchmark_ood)
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


def load_ood(name: str, cfg: DictConfig, shape: Shape) -> ImageSet:
    """One OOD test set, adapted to the ID shape."""
    name = canonical_ood_name(name)
    if name.startswith(FOLDER_PREFIX) and is_known_ood(name):
        out = folders.load_folder(name[len(FOLDER_PREFIX):], name, shape, cfg.get("cache_dir"),
                                  progress_enabled(cfg.progress))
    elif name in OOD_SETS:
        out = OOD_SETS[name](cfg, shape)
    else:
        raise UserError(f"unknown OOD set '{name}'; choose from: {', '.join(known_ood_names())}")
    return ImageSet(name, adapt(out.images, shape))


def load_ood_parts(name: str, cfg: DictConfig, shape: Shape) -> list[ImageSet]:
    """One OOD test set as a list of ImageSets to score one after the other. With ood_resize=native, LSUN-C,
    LSUN-R and iSUN keep their stored image size (channels converted only), one ImageSet per size; otherwise
    (ood_resize=resize, the default, and every other set) one ImageSet at the ID shape, as load_ood."""
    name = canonical_ood_name(name)
    if str(cfg.get("ood_resize", "resize")) == "native" and name in NATIVE_SIZE_SETS:
        root = catalog.locate(name, cfg.data_root, bool(cfg.get("download", False)))
        return folders.load_folder_native(root, name, shape[0], bool(cfg.get("progress", False)),
                                          what=f"get it from {catalog.SOURCES[name].url}")
    return [load_ood(name, cfg, shape)]
