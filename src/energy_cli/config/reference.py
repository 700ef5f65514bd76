"""docs/configuration.md, written from the schema (config/schema.py): every key with its type, default and
help, so the reference cannot drift from the code. `make docs` rewrites it; a test checks it is current."""

from __future__ import annotations

import dataclasses

from omegaconf import MISSING

from energy_cli.config import schema

HEADER = """[README](../README.md) · [usage](usage.md) · [configuration](configuration.md)

# Configuration keys

Every key below is declared once, in `src/energy_cli/config/schema.py`, with its type, its default and the rule
that checks it (this page is written from there by `make docs`). Hydra converts what you type to the key's type
while composing (`lr=1` is the number 1.0; `true`/`false`, also `yes`/`no`/`on`/`off`, for true-or-false keys)
and refuses what does not convert with one line naming the key. The rule then checks ranges and choices before
any work starts. `energy-ood COMMAND --cfg job` prints the composed values of a command.

Defaults written `${...}` follow another key (`epochs` follows the dataset's recipe). *chosen file* means the
value comes from the chosen config file (`conf/dataset/digits.yaml`, ...): the schema gives only its type.
"""

SECTIONS = [
    ("Every command but report", schema.Common, ""),
    ("train and finetune", schema.Training, ""),
    ("train", schema.Train, ""),
    ("finetune", schema.Finetune, ""),
    ("eval", schema.Eval, ""),
    ("score", schema.Score, ""),
    ("report", schema.Report, ""),
    ("dataset=cifar10 | cifar100 (and every dataset)", schema.Dataset, "dataset."),
    ("dataset=digits", schema.EmbeddedDataset, "dataset."),
    ("dataset=folder", schema.FolderDataset, "dataset."),
    ("backbone (every backbone)", schema.Backbone, "backbone."),
    ("backbone=small_cnn", schema.SmallCnn, "backbone."),
    ("backbone=wrn40_2", schema.WideResNet, "backbone."),
    ("backbone=torchvision | timm", schema.HubBackbone, "backbone."),
    ("backbone=custom (its other keys are your class's arguments: +backbone.NAME=VALUE)", schema.CustomBackbone,
     "backbone."),
    ("outliers=china_patches", schema.Outliers, "outliers."),
    ("outliers=tinyimages300k | folder | npy", schema.OutlierFile, "outliers."),
    ("loss=energy | oe", schema.Loss, "loss."),
]


def _own_fields(kind: type) -> list[dataclasses.Field]:
    """The fields `kind` declares itself (not those of its base classes), `command` left out."""
    own = kind.__dict__.get("__annotations__", {})
    return [f for f in dataclasses.fields(kind) if f.name in own and f.name != "command"]


def _default(item: dataclasses.Field) -> str:
    if item.metadata.get("group"):
        return "chosen in the defaults list"
    if item.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = item.default_factory()  # type: ignore[misc]
    else:
        value = item.default
    if value is MISSING:
        return "*chosen file*"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _rows(kind: type, prefix: str) -> list[str]:
    rows = []
    for item in _own_fields(kind):
        name = f"{prefix}{item.name}"
        if isinstance(item.default_factory, type) and dataclasses.is_dataclass(item.default_factory):
            for sub_name, sub in schema.fields_of(item.default_factory, f"{name}."):
                rows.append(_row(sub_name, sub))
        else:
            rows.append(_row(name, item))
    return rows


TYPE_WORDS = {"int": "whole number", "float": "number", "bool": "true / false", "str": "text",
              "Optional[str]": "text or null", "Optional[bool]": "true / false or null",
              "Optional[float]": "number or null", "List[float]": "list of numbers", "Any": "see meaning"}


def _row(name: str, item: dataclasses.Field) -> str:
    kind = "config group" if item.metadata.get("group") else TYPE_WORDS[str(item.type)]
    text = str(item.metadata.get("help", "")).replace("|", "\\|")
    return f"| `{name}` | {kind} | {_default(item).replace('|', chr(92) + '|')} | {text} |"


def reference_markdown() -> str:
    """The whole of docs/configuration.md."""
    parts = [HEADER]
    for title, kind, prefix in SECTIONS:
        rows = _rows(kind, prefix)
        if not rows:
            continue
        parts.append(f"## {title}\n\n| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)
