"""DataSettings: what the data sources read from a command's config, as plain values. Commands build it
(commands/settings.py); the data layer never sees the Hydra config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataSettings:
    """The dataset's and the outliers' keys (plain dicts, interpolations resolved) and the shared places and
    switches the loaders need."""

    dataset: dict[str, Any]
    outliers: dict[str, Any] = field(default_factory=dict)
    data_root: str = "data"
    download: bool = False
    cache_dir: str | None = None
    progress: bool = False
    seed: int = 0
    device: str = "cpu"           # the resolved device (cpu, cuda, cuda:N): dataset=folder sizes its memory by it
    ood_resize: str = "resize"    # eval: how LSUN-C, LSUN-R and iSUN reach the model (resize | native)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, size, size) of the ID images."""
        return int(self.dataset["channels"]), int(self.dataset["image_size"]), int(self.dataset["image_size"])
