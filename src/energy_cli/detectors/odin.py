"""ODIN (Liang et al., ICLR 2018) and the signed-gradient input perturbation it shares with Mahalanobis."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from energy_cli.data.batches import Normalizer, index_batches
from energy_cli.detectors.base import Batch, Detector
from energy_cli.engine.runtime import Runtime
from energy_cli.models import Classifier
from energy_cli.ood.scores import (
    odin_score,
)


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Switch off requires_grad on every parameter (so backward computes input gradients only), then restore."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def perturb(model: Classifier, x: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor],
            noise: float, std: torch.Tensor, runtime: Runtime, chunk: int = 256) -> torch.Tensor:
    """x' = x - noise * sign(grad_x loss) / std: one signed-gradient step that lowers `loss`.

    `x` is in the normalised input space ((pixel/255 - mean) / std); dividing the step by each channel's
    normalisation std, as the ODIN and Mahalanobis reference code does, makes it a step of `noise` in
    [0, 1] pixel units. loss_fn(fp32 logits, fp32 features, rows) is the loss of the rows `rows` of the
    batch and must be a sum over them, so that each input's gradient is its own. The gradient passes run
    `chunk` inputs at a time (eval mode: the result does not depend on it) to bound the memory the backward
    pass holds. No clamping to the valid pixel range (as in the reference code).
    """
    out = torch.empty_like(x)
    with frozen(model), torch.enable_grad():
        for rows in index_batches(len(x), chunk):
            xc = x[rows].detach().requires_grad_(True)
            with runtime.autocast():
                logits, feats = model.forward_with_features(xc)
            loss = loss_fn(logits.float(), feats.float(), rows)
            (grad,) = torch.autograd.grad(loss, xc)
            out[rows] = xc.detach() - noise * torch.sign(grad.float()) / std
    return out


class ODIN(Detector):
    """ODIN (Liang et al. 2018): temperature scaling plus input perturbation.

        x' = x - noise * sign(-grad_x log softmax_yhat(f(x) / T)) / std_c,   yhat = argmax_k f_k(x)
        score = max_k softmax(f(x') / T)_k

    The step is taken in the normalised input space and divided by each channel's normalisation std, like
    the paper's code (so `noise` is in [0, 1] pixel units). With noise = 0 the score comes from the shared
    forward pass (no gradient); with T = 1 and noise = 0 it equals msp exactly.
    """

    name = "odin"

    def __init__(self, model: Classifier, normalizer: Normalizer, runtime: Runtime, temperature: float = 1000.0,
                 noise: float = 0.0014):
        self.model, self.runtime = model, runtime
        self.temperature, self.noise = float(temperature), float(noise)
        self.std = normalizer.to(runtime.device).std / 255.0

    @property
    def needs_input_grad(self) -> bool:
        return self.noise > 0

    def score(self, batch: Batch) -> torch.Tensor:
        if self.noise == 0:
            return odin_score(batch.logits, self.temperature)
        target = batch.logits.argmax(dim=1)

        def loss(logits: torch.Tensor, _feats: torch.Tensor, rows: slice) -> torch.Tensor:
            # sum_i -log softmax_yhat_i(f(x_i) / T)
            log_p = F.log_softmax(logits / self.temperature, dim=1)
            return -log_p.gather(1, target[rows, None]).sum()

        x = perturb(self.model, batch.x, loss, self.noise, self.std, self.runtime)
        with torch.no_grad(), self.runtime.autocast():
            logits = self.model(x)
        return odin_score(logits.float(), self.temperature)
