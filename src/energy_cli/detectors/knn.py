"""KNN (Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022).

    z(x)  = h(x) / ||h(x)||_2          (L2-normalised penultimate features; the training bank Z likewise)
    score = -|| z(x) - z_(k)(x) ||_2   (minus the distance to the k-th nearest training feature)

The paper uses k = 50 on CIFAR-10 (200 on CIFAR-100) and ranks by the same distance (its code reads squared
distances from faiss, a monotone change that leaves every metric unchanged). The search here is exact and
batched: squared distances ||z||^2 + ||z'||^2 - 2 z.z' against the bank in chunks on the device, a running
top-k, and the k-th neighbour's distance recomputed directly in float64.
"""

from __future__ import annotations

import torch

from energy_cli.data.batches import Normalizer
from energy_cli.detectors.base import Batch, FeatureFitDetector, fitted
from energy_cli.engine.runtime import Runtime
from energy_cli.errors import UserError
from energy_cli.models import Classifier


def l2_normalise(features: torch.Tensor) -> torch.Tensor:
    """h / ||h||_2 row by row (a zero row stays zero)."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def kth_neighbour_distance(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 16384) -> torch.Tensor:
    """Euclidean distance (N,), float64, of each query row (N, D) to its k-th nearest row of `bank` (M, D),
    exact: every bank row is compared, `chunk` rows at a time (memory N x chunk)."""
    if not 1 <= k <= len(bank):
        raise ValueError(f"k={k} needs at least k training features, have {len(bank)}")
    q = queries.float()
    q_sq = (q * q).sum(dim=1, keepdim=True)
    best_d = torch.empty((len(q), 0), dtype=q.dtype, device=q.device)
    best_i = torch.empty((len(q), 0), dtype=torch.long, device=q.device)
    for start in range(0, len(bank), chunk):
        part = bank[start:start + chunk].to(q.device, q.dtype)
        d2 = q_sq + (part * part).sum(dim=1)[None, :] - 2 * q @ part.T
        ids = torch.arange(start, start + len(part), device=q.device).expand(len(q), -1)
        d2, ids = torch.cat([best_d, d2], dim=1), torch.cat([best_i, ids], dim=1)
        best_d, pos = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False, sorted=True)
        best_i = ids.gather(1, pos)
    kth = bank[best_i[:, k - 1].to(bank.device)].to(q.device, torch.float64)
    return (queries.double() - kth).norm(dim=1)


class KNN(FeatureFitDetector):
    """score = minus the distance of the L2-normalised penultimate features to their k-th nearest neighbour
    among the L2-normalised ID training features (module docstring)."""

    name = "knn"

    def __init__(self, model: Classifier, normalizer: Normalizer, runtime: Runtime, k: int = 50,
                 batch_size: int = 1024):
        super().__init__(model, normalizer, runtime, batch_size)
        self.k = int(k)
        self.bank: torch.Tensor | None = None

    def fit_features(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if len(features) < self.k:
            raise UserError(f"knn.k={self.k} is larger than the {len(features)} training images; choose a smaller k")
        self.load_state_dict({"bank": l2_normalise(features.float())})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"bank": fitted(self.bank, self.name).cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.bank = state["bank"].to(self.runtime.device, torch.float32)

    def score(self, batch: Batch) -> torch.Tensor:
        return -kth_neighbour_distance(l2_normalise(batch.features.float()), fitted(self.bank, self.name), self.k)
