"""A command's config composed before Hydra runs it (Hydra's compose API; nothing runs, nothing is written):
for the decisions the CLI takes before the run starts, such as which folder the run writes into, or which
interrupted run `resume=true` continues."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from energy_cli.config.overrides import is_override, is_sweep
from energy_cli.config.paths import config_dir

# Hydra flags naming an extra config folder, whose configs (e.g. a user's experiment presets) compose too.
_CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def extra_config_dirs(args: Sequence[str]) -> list[Path]:
    """The folders given with --config-dir / -cd (also as --config-dir=PATH)."""
    dirs = []
    for i, arg in enumerate(args):
        if arg in _CONFIG_DIR_FLAGS and i + 1 < len(args):
            dirs.append(Path(args[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return dirs


def compose_config(command: str, args: Sequence[str], *, with_hydra: bool = False) -> DictConfig:
    """The config `energy-ood COMMAND ARGS` composes: the overrides among `args` (Hydra flags skipped; the
    sweeps of a `-m` run left out, so the config is the one the sweep's jobs share), with the folders of
    --config-dir on the search path; with `with_hydra`, the `hydra` node (run and sweep folders) too.
    Raises Hydra's own errors for a config that does not compose."""
    from hydra import compose, initialize_config_dir

    overrides = [a for a in args if is_override(a) and not is_sweep(a)]
    extra = extra_config_dirs(args)
    if extra:
        overrides.append("hydra.searchpath=[" + ",".join(f"'file://{os.path.abspath(d)}'" for d in extra) + "]")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=command, overrides=overrides, return_hydra_config=with_hydra)


def default_hydra_dirs() -> dict[str, str]:
    """The run and sweep folder patterns of conf/hydra/default.yaml, unresolved: {"run": ..., "sweep": ...}."""
    hydra = OmegaConf.to_container(OmegaConf.load(config_dir() / "hydra" / "default.yaml"), resolve=False)
    return {"run": str(hydra["run"]["dir"]), "sweep": str(hydra["sweep"]["dir"])}  # type: ignore[index]
