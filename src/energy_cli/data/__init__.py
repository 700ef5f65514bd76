"""Data sources by name: in-distribution datasets, auxiliary outliers and OOD test sets.

Every source returns an `ImageSet` of uint8 tensors; OOD sets and outliers come back already adapted to
the ID images' shape (channels, size), so any OOD set works against any ID dataset.
Add a source by writing a module with a loader and registering it in the tables below.
"""

from __future__ import annotations

from typing import Callable, Iterable

from omegaconf import DictConfig, ListConfig

from energy_cli.data import embedded, synthetic
from energy_cli.data.images import ImageSet, adapt
from energy_cli.errors import UserError

Shape = tuple[int, int, int]

# name -> cfg -> (train, test)
ID_DATASETS: dict[str, Callable[[DictConfig], tuple[ImageSet, ImageSet]]] = {
    "digits": lambda cfg: embedded.load_digits_split(cfg.dataset.get("test_fraction", 0.2)),
}

# name -> (cfg, shape) -> outliers, already at `shape`
OUTLIERS: dict[str, Callable[[DictConfig, Shape], ImageSet]] = {
    "china_patches": lambda cfg, shape: embedded.china_patches(int(cfg.outliers.n), shape, int(cfg.seed)),
}

# name -> (cfg, shape) -> OOD test set (adapted to `shape` by load_ood)
OOD_SETS: dict[str, Callable[[DictConfig, Shape], ImageSet]] = {
    "flower_patches": lambda cfg, shape: embedded.flower_patches(_ood_size(cfg), shape, int(cfg.seed)),
    "gaussian": lambda cfg, shape: synthetic.gaussian(_ood_size(cfg), shape, int(cfg.seed)),
    "uniform": lambda cfg, shape: synthetic.uniform(_ood_size(cfg), shape, int(cfg.seed)),
    "rademacher": lambda cfg, shape: synthetic.rademacher(_ood_size(cfg), shape, int(cfg.seed)),
    "blobs": lambda cfg, shape: synthetic.blobs(_ood_size(cfg), shape, int(cfg.seed)),
}

# alternative names users may type
OOD_ALIASES: dict[str, str] = {"lsun": "lsun_c"}


def _ood_size(cfg: DictConfig) -> int:
    """Number of images in each generated OOD set (embedded and synthetic)."""
    return int(cfg.dataset.get("ood_size", 10000))


def id_shape(cfg: DictConfig) -> Shape:
    """(channels, size, size) of the ID images, from the dataset config."""
    d = cfg.dataset
    return int(d.channels), int(d.image_size), int(d.image_size)


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
    if requested is None:
        names: list[str] = list(dataset.ood)
    elif isinstance(requested, str):
        names = [n.strip() for n in requested.split(",") if n.strip()]
    elif isinstance(requested, (list, tuple, ListConfig)):
        names = [str(n).strip() for n in requested]
    else:
        raise UserError(f"ood must be a list of OOD set names, got {requested!r}")
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
    return sorted(OOD_SETS) + sorted(OOD_ALIASES)


def is_known_ood(name: str) -> bool:
    return name in OOD_SETS


def load_ood(name: str, cfg: DictConfig, shape: Shape) -> ImageSet:
    """One OOD test set, adapted to the ID shape."""
    name = canonical_ood_name(name)
    if name not in OOD_SETS:
        raise UserError(f"unknown OOD set '{name}'; choose from: {', '.join(known_ood_names())}")
    out = OOD_SETS[name](cfg, shape)
    return ImageSet(name, adapt(out.images, shape))
