"""The batched pass that feeds every detector.

`score_images` runs the model once per batch (eval mode, no gradients) and hands every detector the same
`Batch`: the normalised inputs and the fp32 logits and penultimate features of that forward pass. The logit
scores (msp, maxlogit, energy) only read the logits; ODIN and Mahalanobis with a non-zero noise perturb the
inputs first (one forward and backward pass for the input gradient, then one forward pass of the perturbed
inputs), with every parameter's requires_grad switched off so that no weight gradient is computed. The math
is in ood/scores.py. Forward passes use the run's precision (`Runtime`); losses, gradient signs and scores
are computed in fp32, every score in float64 (a fp32 softmax rounds confident images' MSP to 1.0)."""

from __future__ import annotations

from typing import Sequence

import torch

from energy_cli.data.batches import Normalizer
from energy_cli.data.streams import LazyImages
from energy_cli.detectors.base import Batch, Detector
from energy_cli.engine.inference import device_batches, eval_mode
from energy_cli.engine.runtime import Runtime, is_compiled
from energy_cli.models import Classifier


def score_images(model: Classifier, images: torch.Tensor | LazyImages, detectors: Sequence[Detector],
                 normalizer: Normalizer, runtime: Runtime,
                 batch_size: int = 1024) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scores of uint8 images (N, C, H, W; a tensor, or a LazyImages streamed from disk) under every detector,
    batch by batch on the device, in eval mode.

    Returns the fp32 logits (N, K) and {detector name: float64 scores (N,)}, on the CPU. Each batch is
    forwarded once for all detectors; perturbing detectors add their own gradient and forward passes.
    """
    with_features = any(d.needs_features for d in detectors)
    # a compiled model runs through model(x) (forward_with_features stays eager): keep its batch shape fixed
    pad = is_compiled(model) and not with_features
    # inference_mode is the faster of the two, but its tensors cannot enter autograd (input perturbation)
    no_grad = torch.no_grad if any(d.needs_input_grad for d in detectors) else torch.inference_mode
    logits_parts: list[torch.Tensor] = []
    score_parts: dict[str, list[torch.Tensor]] = {d.name: [] for d in detectors}
    with eval_mode(model):
        for x, n in device_batches(images, normalizer, runtime, batch_size, pad):
            with no_grad(), runtime.autocast():
                if with_features:
                    logits, feats = model.forward_with_features(x)
                    feats = feats.float()
                else:
                    logits, feats = model(x), None
            batch = Batch(x[:n], logits[:n].float(), None if feats is None else feats[:n])
            logits_parts.append(batch.logits.cpu())
            for det in detectors:
                score_parts[det.name].append(det.score(batch).double().cpu())
    num_classes = model.fc.out_features
    logits = torch.cat(logits_parts) if logits_parts else torch.zeros((0, num_classes))
    return logits, {name: torch.cat(p) if p else torch.zeros(0, dtype=torch.float64) for name, p in score_parts.items()}
