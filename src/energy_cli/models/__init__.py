"""Backbones by name. Each is a `Classifier`: `features(x)` (penultimate) and `fc` (the linear head).

Besides energy-ood's own (BACKBONES), `build_model` builds torchvision and timm models (`name: torchvision` /
`timm` with `arch`) and any config with Hydra's `_target_` (models.external), wrapped as Classifiers by
models.adapter (`as_classifier`)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from energy_cli.errors import UserError
from energy_cli.models.adapter import ModuleClassifier, as_classifier, load_plain_weights, plain_module
from energy_cli.models.base import Classifier
from energy_cli.models.resnet import ResNet18
from energy_cli.models.small_cnn import SmallCNN
from energy_cli.models.wrn import WideResNet

# name -> constructor(num_classes, in_channels, **backbone options)
BACKBONES: dict[str, Callable[..., Classifier]] = {
    "small_cnn": lambda num_classes, in_channels, width=32, dropout=0.0: SmallCNN(num_classes, in_channels, width, dropout),
    "wrn40_2": lambda num_classes, in_channels, depth=40, widen_factor=2, dropout=0.3: WideResNet(
        num_classes, in_channels, depth, widen_factor, dropout),
    "resnet18": lambda num_classes, in_channels: ResNet18(num_classes, in_channels),
}

# models from elsewhere, by `arch` (models.external); a config with `_target_` needs no name at all
EXTERNAL = ("torchvision", "timm", "custom")
NAMES = [*BACKBONES, *EXTERNAL]


def backbone_name(backbone: Mapping[str, Any]) -> str:
    """The backbone's name: `name`, else (a user's config with only `_target_`) the target's last component."""
    name = backbone.get("name")
    if name:
        return str(name)
    target = backbone.get("_target_")
    return str(target).rsplit(".", 1)[-1] if target else "custom"


def backbone_label(backbone: Mapping[str, Any]) -> str:
    """The backbone as results and logs show it: the name, with the arch (`torchvision:resnet18`) or, for
    `custom`, the target's last component (`custom:MyNet`)."""
    name = backbone_name(backbone)
    if name in ("torchvision", "timm") and backbone.get("arch"):
        return f"{name}:{backbone.get('arch')}"
    if name == "custom" and backbone.get("_target_"):
        return f"custom:{str(backbone.get('_target_')).rsplit('.', 1)[-1]}"
    return name


def build_model(backbone: Mapping[str, Any], num_classes: int, in_channels: int, image_size: int | None = None,
                download: bool = False) -> Classifier:
    """Build a backbone from its config (`name` plus options, or `_target_`) for the given classes and input
    channels. Models from elsewhere are built for `image_size` (vit_*), checked with one forward at that size
    (models.adapter), and fetch pretrained weights only with `download`."""
    from energy_cli.models import external

    backbone = dict(backbone)
    name = backbone.get("name")
    sample = None if image_size is None else (int(in_channels), int(image_size), int(image_size))
    if backbone.get("_target_") or name == "custom":
        built = external.target_module(backbone, num_classes, in_channels)
        return as_classifier(built, num_classes, backbone.get("head"), sample)
    if name in ("torchvision", "timm"):
        options = {k: v for k, v in backbone.items() if k not in external.OWN_KEYS}
        arch = backbone.get("arch")
        if not arch or not isinstance(arch, str):
            raise UserError(f"backbone={name} needs backbone.arch=NAME (e.g. resnet18)")
        if name == "torchvision":
            net = external.torchvision_module(arch, num_classes, in_channels, image_size, download,
                                              head=backbone.get("head"), **options)
        else:
            net = external.timm_module(arch, num_classes, in_channels, image_size, download, **options)
        return ModuleClassifier(net, head=backbone.get("head"), num_classes=num_classes, sample_shape=sample)
    options = {k: v for k, v in backbone.items() if k != "name"}
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'; choose one of: {', '.join(NAMES)} (or give backbone._target_)")
    try:
        return BACKBONES[name](num_classes, in_channels, **options)
    except TypeError as exc:
        raise UserError(f"backbone '{name}' does not take these options {sorted(options)}: {exc}") from exc


__all__ = ["BACKBONES", "Classifier", "EXTERNAL", "ModuleClassifier", "NAMES", "as_classifier", "backbone_label",
           "backbone_name", "build_model", "load_plain_weights", "plain_module"]
