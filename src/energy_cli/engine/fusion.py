"""An eval-only copy of a classifier with each BatchNorm that directly follows a convolution folded into it.

In eval mode a BatchNorm is the per-channel affine map y = gamma * (x - mu) / sqrt(var + eps) + beta with its
running statistics, so conv-then-BN is one convolution with weights W * s (s = gamma / sqrt(var + eps), per output
channel) and bias (b - mu) * s + beta: the same function up to floating-point rounding, one pass over the
activations fewer. The model's `features` are traced with torch.fx and the conv-BN pairs whose convolution feeds
only the BatchNorm are folded (torch.fx.experimental.optimization.fuse); a BatchNorm that follows something else
(pre-activation networks: the sum of a residual block) stays. A model fx cannot trace is returned unchanged.

A wrapped module (models.ModuleClassifier: torchvision, timm, `_target_` models) is traced whole, from images
to logits, and re-wrapped: its head layer keeps its name in the traced graph, so the features are still the
head's input.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from energy_cli.models.adapter import ModuleClassifier
from energy_cli.models.base import Classifier


class Features(nn.Module):
    """model.features as a module's forward, so that fx traces the penultimate features only."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


class FoldedClassifier(Classifier):
    """A Classifier whose features are a traced, BN-folded graph and whose head is the original linear layer.
    For inference only: switching it to training mode raises (the folded BatchNorms cannot learn)."""

    def __init__(self, body: nn.Module, fc: nn.Linear, feature_dim: int):
        super().__init__()
        self.body = body
        self.fc = fc
        self.feature_dim = feature_dim
        super().train(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def train(self, mode: bool = True) -> "FoldedClassifier":
        if mode:
            raise RuntimeError("a BatchNorm-folded model is for inference only; train the original model")
        return super().train(False)


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_batchnorm(model: Classifier) -> Classifier:
    """An eval-mode copy of `model` with conv->BN pairs folded (see the module docstring); `model` itself is not
    changed. Returns `model` when nothing can be folded or fx cannot trace its features."""
    from torch.fx import symbolic_trace
    from torch.fx.experimental.optimization import fuse

    if count_batchnorms(model) == 0 or isinstance(model, FoldedClassifier):
        return model
    was_training = model.training
    try:
        twin = copy.deepcopy(model).eval()
        if isinstance(twin, ModuleClassifier):
            net = fuse(symbolic_trace(twin.net), inplace=True, no_trace=True)
            wrapped = ModuleClassifier(net, head=twin.head_name, num_classes=twin.num_classes)
            body: nn.Module = Features(wrapped)
            fc = wrapped.fc
        else:
            body, fc = fuse(symbolic_trace(Features(twin)), inplace=True, no_trace=True), twin.fc
    except Exception:  # noqa: BLE001 - untraceable code (data-dependent control flow, ...): keep the model as is
        return model
    finally:
        model.train(was_training)
    if count_batchnorms(body) == count_batchnorms(model):
        return model
    return FoldedClassifier(body, fc, int(twin.feature_dim))
