"""Where the Hydra configs live (inside the installed wheel, energy_cli/conf, or the repository's conf/), and the
user cache folder (the probe's answers, built kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """The folder holding the Hydra configs: inside the installed wheel, or the repository's conf/. The
    structured schemas its files extend are registered in Hydra's ConfigStore on the way (config/schema.py),
    so whatever composes from this folder finds them."""
    from energy_cli.config.schema import register

    register()
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "conf", package.parent.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"energy-ood's configs are missing (looked in {package / 'conf'}); reinstall the package")


def user_cache_dir() -> Path:
    """The user cache folder: $XDG_CACHE_HOME/energy-ood, else ~/.cache/energy-ood."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "energy-ood"
