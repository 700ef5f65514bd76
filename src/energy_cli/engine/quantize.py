"""precision=int8: post-training static quantization of a classifier's convolutional body for CPU inference
(eval only), with PyTorch's x86 int8 kernels.

    weights      int8, one scale per output channel (symmetric)
    activations  uint8, one scale and zero point per tensor, from the range each layer's input and output
                 takes on calibration batches of ID training images (histogram observers)
    head         the last linear layer stays fp32, so logits, energies and softmax scores are fp32 functions of
                 the dequantized penultimate features

The int8 model gives the same kind of scores as the fp32 one, but not the same values: the quantization error
moves them (docs/performance.md has the measured change of every metric). Scores that need gradients through
the model (ODIN's and Mahalanobis's input perturbation) cannot run on it."""

from __future__ import annotations

import logging
import warnings
from typing import Iterable

import torch
from torch import nn

from energy_cli.errors import UserError
from energy_cli.models.base import Classifier

log = logging.getLogger(__name__)

BACKEND = "x86"          # PyTorch's x86 int8 backend (fbgemm and oneDNN kernels, chosen per layer)
CALIBRATION_IMAGES = 512  # ID training images whose activations set the uint8 ranges


class _Body(nn.Module):
    """A classifier's `features` as a module's forward (what FX traces)."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


class Int8Classifier(Classifier):
    """A Classifier whose features come from an int8 body; the head is the original fp32 linear layer."""

    def __init__(self, body: nn.Module, fc: nn.Linear, feature_dim: int):
        super().__init__()
        self.body = body
        self.fc = fc
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float())


def int8_supported() -> bool:
    return BACKEND in torch.backends.quantized.supported_engines


def quantize_int8(model: Classifier, calibration: Iterable[torch.Tensor]) -> Int8Classifier:
    """The int8 version of `model` (eval mode, on the CPU, BatchNorms already folded or not), its activation
    ranges calibrated on the normalised image batches of `calibration`. A UserError when this PyTorch has no
    x86 int8 kernels or the model cannot be traced (a model with data-dependent Python control flow)."""
    if not int8_supported():
        raise UserError(f"precision=int8 needs PyTorch's {BACKEND} int8 kernels, which this build lacks "
                        f"(it has: {', '.join(torch.backends.quantized.supported_engines)}); use precision=fp32")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = BACKEND
    batches = iter(calibration)
    first = next(batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.ao.quantization announces its move to torchao on every call
        try:
            prepared = prepare_fx(_Body(model.cpu().eval()), get_default_qconfig_mapping(BACKEND),
                                  example_inputs=(first[:1].float(),))
        except Exception as exc:  # noqa: BLE001 - FX cannot trace every model; say so in one line
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"precision=int8: this model cannot be traced for quantization ({reason}); use "
                            "precision=fp32") from None
        with torch.inference_mode():
            prepared(first.float())
            for batch in batches:
                prepared(batch.float())
        body = convert_fx(prepared)
    return Int8Classifier(body, model.fc, model.feature_dim).eval()
