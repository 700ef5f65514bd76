"""WideResNet (Zagoruyko & Komodakis, 2016) with pre-activation blocks; WRN-40-2 is the paper's backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from energy_cli.models.base import Classifier


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: keep each value with probability 1 - p and scale the kept ones by 1 / (1 - p).

    On CPUs the keep mask is drawn 16 bits at a time: each 64-bit word from `random_` over the full int64 range
    gives four uniform 16-bit numbers, and a value is kept when its number is at least the threshold, i.e. with
    probability 1 - p to within 2^-16 (the scale uses the exact probability). That is a quarter of the
    random-number calls of F.dropout's per-element Bernoulli draws, and the comparison reads the words in order.
    In fp32 the scale is folded into the mask (values 0 and 1 / keep), so the forward and the backward pass are one
    product each; in lower precisions the mask stays 0/1 and the scale is applied to the product, so that it is
    not rounded to that precision first. Measured costs: docs/performance.md. Elsewhere (GPUs) it is F.dropout.
    """
    if not training or p <= 0:
        return x
    if x.device.type != "cpu" or p >= 1:
        return F.dropout(x, p, True)
    n = x.numel()
    threshold = round(65536 * p) - 32768                               # P(bits >= threshold) = 1 - p
    keep = (32768 - threshold) / 65536
    words = torch.empty(((n + 3) // 4,), dtype=torch.int64).random_(-2**63, None)   # 64 random bits each
    mask = words.view(torch.int16)[:n] >= threshold
    folded = x.dtype in (torch.float32, torch.float64)
    factor = mask.to(x.dtype).mul_(1.0 / keep) if folded else mask
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        nn_, c, h, w = x.shape                                         # lay the mask out like x
        factor = factor.view(nn_, h, w, c).permute(0, 3, 1, 2)
    else:
        factor = factor.view(x.shape)
    return x * factor if folded else x * factor * (1.0 / keep)


class _Block(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus a 1x1 projection shortcut when the shape changes.
    `dropout_fn` is the dropout above; the benchmark's plain loop sets F.dropout on its copy (the paper's code)."""

    dropout_fn = staticmethod(dropout)

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal = c_in == c_out and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLUs in place: BatchNorm's backward needs its input, not its output, so the output can be reused
        o = F.relu(self.bn1(x), inplace=True)
        y = self.conv1(o)
        y = F.relu(self.bn2(y), inplace=True)
        y = self.dropout_fn(y, self.dropout, self.training)
        y = self.conv2(y)
        return y + (x if self.equal else self.shortcut(o))


class WideResNet(Classifier):
    """WRN-depth-k: 3 stages of (depth-4)/6 blocks with 16k, 32k, 64k channels after a 16-channel stem."""

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 40, widen_factor: int = 2,
                 dropout: float = 0.3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            blocks = [_Block(widths[i] if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1, dropout)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(widths[3])
        self.feature_dim = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.conv1(x))
        x = F.relu(self.bn(x), inplace=True)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
