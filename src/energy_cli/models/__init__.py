"""Backbones by name. Each is a `Classifier`: `features(x)` (penultimate) and `fc` (the linear head)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from energy_cli.errors import UserError
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


def build_model(backbone: Mapping[str, Any], num_classes: int, in_channels: int) -> Classifier:
    """Build a backbone from its config (`name` plus options) for the given classes and input channels."""
    options = {k: v for k, v in dict(backbone).items() if k != "name"}
    name = backbone["name"]
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")
    try:
        return BACKBONES[name](num_classes, in_channels, **options)
    except TypeError as exc:
        raise UserError(f"backbone '{name}' does not take these options {sorted(options)}: {exc}") from exc


__all__ = ["BACKBONES", "Classifier", "build_model"]
