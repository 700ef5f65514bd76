"""Detectors: every detection score behind one small interface, and the batched pass that feeds them.

A detector has a `name`, the `temperature` it applies (None when it has none), an optional
`fit(train)` (statistics of the ID training set; `needs_fit` says whether it has one) and
`score(batch) -> (N,) fp32 scores, higher = more ID`. `score_images` runs the model once per batch
(eval mode, no gradients) and hands every detector the same `Batch`: the normalised inputs and the fp32
logits and penultimate features of that forward pass. The logit scores (msp, maxlogit, energy) only
read the logits; ODIN and Mahalanobis with a non-zero noise perturb the inputs first (one forward and
backward pass for the input gradient, then one forward pass of the perturbed inputs), with every
parameter's requires_grad switched off so that no weight gradient is computed. The math is in
scores.py; this module only runs the model. Forward passes use the run's precision (`Runtime`);
losses, gradient signs and scores are computed in fp32 (Mahalanobis distances in fp64).
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from energy_cli.data.batches import Normalizer, index_batches
from energy_cli.data.images import ImageSet
from energy_cli.engine import Runtime, device_batches, eval_mode, is_compiled, predict
from energy_cli.models import Classifier
from energy_cli.scores import (LOGIT_SCORES, GaussianFit, distance_to_class, fit_class_gaussians,
                               mahalanobis_distances, mahalanobis_score, odin_score)

# every score eval knows, in the contract's order (`score=all`)
DETECTOR_NAMES = (*LOGIT_SCORES, "odin", "mahalanobis")


@dataclass
class Batch:
    """One batch as every detector sees it: normalised inputs on the device, and the fp32 logits (N, K)
    and penultimate features (N, D) of one forward pass over them."""

    x: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor | None   # None when no detector of the pass asked for them (needs_features)


class Detector(abc.ABC):
    """The interface: name, the temperature it applies (None if none), score(batch); detectors with
    needs_fit also have fit(train) and state_dict() / load_state_dict() (the fit as tensors, for caching);
    needs_features says whether score() reads batch.features."""

    name: str = ""
    temperature: float | None = None
    needs_fit: bool = False
    needs_features: bool = False

    @property
    def needs_input_grad(self) -> bool:
        """Whether score() differentiates through the model w.r.t. its inputs (perturbing detectors)."""
        return False

    def fit(self, train: ImageSet) -> None:
        """Fit statistics on the labelled ID training set (only detectors with needs_fit)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a fit saved with state_dict()."""

    @abc.abstractmethod
    def score(self, batch: Batch) -> torch.Tensor:
        """(N,) fp32 scores of the batch, higher = more in-distribution."""


class LogitDetector(Detector):
    """A score that is a pure function of the logits (scores.LOGIT_SCORES). `temperature` (the key) is
    passed to the function; the temperature the score applies is 1 for msp (the softmax at T = 1), none for
    maxlogit, and the key for energy."""

    def __init__(self, name: str, temperature: float):
        self.name = name
        self.fn: Callable[[torch.Tensor, float], torch.Tensor] = LOGIT_SCORES[name]
        self.energy_temperature = float(temperature)
        self.temperature = {"msp": 1.0, "maxlogit": None}.get(name, self.energy_temperature)

    def score(self, batch: Batch) -> torch.Tensor:
        return self.fn(batch.logits, self.energy_temperature)


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


class Mahalanobis(Detector):
    """Mahalanobis score (Lee et al. 2018) on the penultimate features, one shared covariance.

    fit: class means and shared covariance of the ID training features (eval mode, no augmentation).
    score = -min_c (f(x') - mu_c)^T Sigma^+ (f(x') - mu_c), where x' = x without noise, else
        x' = x - noise * sign(grad_x d_chat(x)) / std_c,   chat = the class mean closest to f(x)
    (the step lowers the distance to the closest mean; normalised space, divided by each channel's std).
    """

    name = "mahalanobis"
    needs_fit = True
    needs_features = True

    def __init__(self, model: Classifier, normalizer: Normalizer, runtime: Runtime, noise: float = 0.0,
                 batch_size: int = 1024):
        self.model, self.normalizer, self.runtime = model, normalizer, runtime
        self.noise, self.batch_size = float(noise), int(batch_size)
        self.std = normalizer.to(runtime.device).std / 255.0
        self.gaussians: GaussianFit | None = None

    def fit(self, train: ImageSet) -> None:
        if train.labels is None:
            raise ValueError(f"{train.name}: Mahalanobis needs labelled training images")
        _, feats = predict(self.model, train.images, self.normalizer, self.runtime, self.batch_size, features=True)
        self.gaussians = fit_class_gaussians(feats, train.labels).to(self.runtime.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        g = self.fitted()
        return {"classes": g.classes.cpu(), "means": g.means.cpu(), "precision": g.precision.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.gaussians = GaussianFit(state["classes"], state["means"].double(),
                                     state["precision"].double()).to(self.runtime.device)

    def fitted(self) -> GaussianFit:
        if self.gaussians is None:
            raise RuntimeError("Mahalanobis.score before fit")
        return self.gaussians

    @property
    def needs_input_grad(self) -> bool:
        return self.noise > 0

    def score(self, batch: Batch) -> torch.Tensor:
        g = self.fitted()
        if self.noise == 0:
            return mahalanobis_score(batch.features, g)
        closest = mahalanobis_distances(batch.features, g).argmin(dim=1)

        def loss(_logits: torch.Tensor, feats: torch.Tensor, rows: slice) -> torch.Tensor:   # sum_i d_chat_i(x_i)
            return distance_to_class(feats, g, closest[rows]).sum()

        x = perturb(self.model, batch.x, loss, self.noise, self.std, self.runtime)
        with torch.no_grad(), self.runtime.autocast():
            feats = self.model.features(x)
        return mahalanobis_score(feats.float(), g)


def build_detectors(names: Sequence[str], model: Classifier, normalizer: Normalizer, runtime: Runtime, *,
                    temperature: float = 1.0, odin_temperature: float = 1000.0, odin_noise: float = 0.0014,
                    mahalanobis_noise: float = 0.0, batch_size: int = 1024) -> list[Detector]:
    """One detector per score name (DETECTOR_NAMES), in the given order."""
    out: list[Detector] = []
    for name in names:
        if name in LOGIT_SCORES:
            out.append(LogitDetector(name, temperature))
        elif name == "odin":
            out.append(ODIN(model, normalizer, runtime, odin_temperature, odin_noise))
        elif name == "mahalanobis":
            out.append(Mahalanobis(model, normalizer, runtime, mahalanobis_noise, batch_size))
        else:
            raise ValueError(f"unknown score {name!r}; known: {', '.join(DETECTOR_NAMES)}")
    return out


def score_images(model: Classifier, images: torch.Tensor, detectors: Sequence[Detector], normalizer: Normalizer,
                 runtime: Runtime, batch_size: int = 1024) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scores of uint8 images (N, C, H, W) under every detector, batch by batch on the device, in eval mode.

    Returns the fp32 logits (N, K) and {detector name: fp32 scores (N,)}, on the CPU. Each batch is
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
                score_parts[det.name].append(det.score(batch).float().cpu())
    num_classes = model.fc.out_features
    logits = torch.cat(logits_parts) if logits_parts else torch.zeros((0, num_classes))
    return logits, {name: torch.cat(p) if p else torch.zeros(0) for name, p in score_parts.items()}
