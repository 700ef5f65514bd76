"""Mahalanobis (Lee et al., NeurIPS 2018): class-conditional Gaussians on the penultimate features."""

from __future__ import annotations

import torch

from energy_cli.data.batches import Normalizer
from energy_cli.data.images import ImageSet
from energy_cli.detectors.base import Batch, Detector
from energy_cli.detectors.odin import perturb
from energy_cli.engine.inference import predict
from energy_cli.engine.runtime import Runtime
from energy_cli.models import Classifier
from energy_cli.ood.scores import (
    GaussianFit,
    distance_to_class,
    fit_class_gaussians,
    mahalanobis_distances,
    mahalanobis_score,
)


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
