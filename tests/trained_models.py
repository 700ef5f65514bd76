"""Models that look trained: BatchNorms with non-trivial statistics and affine parameters (fusion, Winograd)."""

import torch
from torch import nn

from energy_cli.models import build_model


def trained_looking(backbone, channels):
    """A model whose BatchNorms hold non-trivial statistics and affine parameters, as after training."""
    torch.manual_seed(0)
    model = build_model(backbone, 10, channels)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return model.eval()
