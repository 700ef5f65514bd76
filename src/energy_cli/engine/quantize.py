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

from energy_cli.engine.fusion import Features, FoldedClassifier
from energy_cli.errors import UserError
from energy_cli.models.adapter import ModuleClassifier
from energy_cli.models.base import Classifier

log = logging.getLogger(__name__)

BACKEND = "x86"          # PyTorch's x86 int8 backend (fbgemm and oneDNN kernels, chosen per layer)
CALIBRATION_IMAGES = 512  # ID training images whose activations set the uint8 ranges


class Int8Classifier(FoldedClassifier):
    """A traced classifier (engine.fusion) whose body is the int8 graph; the head is the original fp32 linear
    layer. For inference only, like every traced body."""


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
    model = model.cpu().eval()
    wrapped = _wrapped_module(model)
    qconfig = get_default_qconfig_mapping(BACKEND)
    if wrapped is not None:   # a torchvision / timm / own model: its whole net, the head left in fp32
        target: nn.Module = wrapped.net
        qconfig = qconfig.set_module_name(wrapped.head_name, None)
    else:
        target = Features(model)
    batches = iter(calibration)
    first = next(batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.ao.quantization announces its move to torchao on every call
        try:
            prepared = prepare_fx(target, qconfig, example_inputs=(first[:1].float(),))
        except Exception as exc:  # noqa: BLE001 - FX cannot trace every model; say so in one line
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"precision=int8: this model cannot be traced for quantization ({reason}); use "
                            "precision=fp32") from None
        with torch.inference_mode():
            prepared(first.float())
            for batch in batches:
                prepared(batch.float())
        converted = convert_fx(prepared)
    if wrapped is not None:   # the penultimate features are again the input of the (fp32) head
        net = ModuleClassifier(converted, head=wrapped.head_name, num_classes=wrapped.num_classes)
        return Int8Classifier(Features(net), net.fc, net.feature_dim)
    return Int8Classifier(converted, model.fc, model.feature_dim)


def _wrapped_module(model: Classifier) -> ModuleClassifier | None:
    """The ModuleClassifier inside `model` (itself, or the body of its BatchNorm-folded version), else None:
    its features come from a hook on the head, which FX cannot trace through, so its net is quantized instead."""
    if isinstance(model, ModuleClassifier):
        return model
    body = getattr(model, "body", None)
    if isinstance(model, FoldedClassifier) and isinstance(body, Features) and isinstance(body.model, ModuleClassifier):
        return body.model
    return None
