"""Where each public dataset lives under data_root, where to get it, and (where torchvision can) fetching it.

`locate(key, data_root, download)` returns the dataset's path when it is there. When it is missing it
either fetches it with torchvision (download=true, for the datasets torchvision knows) or raises one
UserError line naming the expected path and the public address to get it from. With download=false
nothing here touches the network. Nothing here checks checksums: any file in the expected place is read,
and the readers report malformed ones.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from energy_cli.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One public dataset: its name in messages, its path under data_root, how to get it by hand, and
    (optionally) a function that fetches it into data_root with torchvision."""

    title: str
    relpath: str
    url: str
    how: str
    fetch: Callable[[Path], None] | None = None


def _fetch_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(root=str(root / "cifar10"), train=True, download=True)


def _fetch_cifar100(root: Path) -> None:
    from torchvision.datasets import CIFAR100

    CIFAR100(root=str(root / "cifar100"), train=True, download=True)


def _fetch_svhn(root: Path) -> None:
    from torchvision.datasets import SVHN

    SVHN(root=str(root / "svhn"), split="test", download=True)


def _fetch_dtd(root: Path) -> None:
    """torchvision unpacks DTD to <root>/dtd/dtd/images; fetch into a scratch folder, then move the inner
    dtd/ folder to <data_root>/dtd so the images end up in the public layout, <data_root>/dtd/images."""
    from torchvision.datasets import DTD

    scratch = root / ".dtd-download"
    try:
        DTD(root=str(scratch), download=True)
        target = root / "dtd"
        if target.exists() and not (target / "images").is_dir():
            raise UserError(f"{target} exists but holds no images/ folder; move it away and run again")
        if not target.exists():
            (scratch / "dtd" / "dtd").rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"

SOURCES: dict[str, Source] = {
    "cifar10": Source("CIFAR-10", "cifar10/cifar-10-batches-py",
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "unpack it into {root}/cifar10/", _fetch_cifar10),
    "cifar100": Source("CIFAR-100", "cifar100/cifar-100-python",
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       "unpack it into {root}/cifar100/", _fetch_cifar100),
    "svhn": Source("SVHN (test split)", "svhn/test_32x32.mat",
                   "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                   "save it as {root}/svhn/test_32x32.mat", _fetch_svhn),
    "textures": Source("Textures (DTD)", "dtd/images",
                       "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                       "unpack it into {root}/ (it holds dtd/images/)", _fetch_dtd),
    "places365": Source("Places365", "places365", "http://places2.csail.mit.edu/download.html",
                        "put a folder of its test images (a subset will do) at {root}/places365/"),
    "lsun_c": Source("LSUN-Crop", "LSUN", "https://www.dropbox.com/s/fhtsw1m3qxlwj6h/LSUN.tar.gz",
                     "unpack it into {root}/ (it holds LSUN/)"),
    "lsun_r": Source("LSUN-Resize", "LSUN_resize", "https://www.dropbox.com/s/moqh2wh8696c3yl/LSUN_resize.tar.gz",
                     "unpack it into {root}/ (it holds LSUN_resize/)"),
    "isun": Source("iSUN", "iSUN", "https://www.dropbox.com/s/ssz7qxfqae0cca5/iSUN.tar.gz",
                   "unpack it into {root}/ (it holds iSUN/)"),
    "tinyimages300k": Source("300K random images", "300K_random_images.npy",
                             "https://people.eecs.berkeley.edu/~hendrycks/300K_random_images.npy",
                             "save it as {root}/300K_random_images.npy"),
}


def expected_path(key: str, data_root: str | Path) -> Path:
    return Path(data_root).expanduser() / SOURCES[key].relpath


def missing_message(key: str, data_root: str | Path, path: Path | None = None) -> str:
    """One line: what is missing, where it was expected, where to get it."""
    src = SOURCES[key]
    root = Path(data_root).expanduser()
    path = path or expected_path(key, root)
    text = (f"{src.title} not found at {path} (data_root={root}): download {src.url} and "
            f"{src.how.format(root=root.as_posix().rstrip('/'))}")
    return text + (", or add download=true" if src.fetch is not None else "")


def _present(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def locate(key: str, data_root: str | Path, download: bool = False) -> Path:
    """The path of dataset `key` under data_root; fetched with torchvision first when missing and
    download=true (where torchvision can); otherwise a UserError saying where to get it."""
    path = expected_path(key, data_root)
    if _present(path):
        return path
    src = SOURCES[key]
    if download and src.fetch is not None:
        root = Path(data_root).expanduser()
        log.info(f"{src.title}: not in {path}, downloading {src.url} with torchvision ...")
        try:
            root.mkdir(parents=True, exist_ok=True)
            src.fetch(root)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, disk and archive errors all end the same way
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"downloading {src.title} failed ({type(exc).__name__}: {reason}); "
                            f"download {src.url} by hand and "
                            f"{src.how.format(root=root.as_posix().rstrip('/'))}") from None
        if _present(path):
            return path
        raise UserError(f"downloaded {src.title} but {path} is still missing; "
                        f"{src.how.format(root=root.as_posix().rstrip('/'))} by hand from {src.url}")
    raise UserError(missing_message(key, data_root, path))
